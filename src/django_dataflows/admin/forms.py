"""The admin's forms for a flow (its flow class, configuration and schedule) and a backfill."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import (
    QuerySet,
)
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from django_dataflows.conf import app_settings
from django_dataflows.flows import is_registered, registered_flows
from django_dataflows.models import (
    Backfill,
    DataFlow,
    cycle_error,
    dependency_cycle,
)
from django_dataflows.permissions import (
    WHAT_RUNS_FIELDS,
    fields_that_make_due,
    run_permission_message,
)

if TYPE_CHECKING:
    from django.forms.widgets import _OptAttrs

    # Generic in django-stubs only; Django's classes are not subscriptable at run time.
    _DataFlowModelForm = forms.ModelForm[DataFlow]
else:
    _DataFlowModelForm = forms.ModelForm

# -- the data flow form -------------------------------------------------------------------


class FlowSelect(forms.Select):
    """A select of flow paths whose options carry each flow's description as a tooltip."""

    descriptions: dict[str, str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.descriptions = {}

    def create_option(
        self,
        name: str,
        value: Any,
        label: int | str,
        selected: bool,
        index: int,
        subindex: int | None = None,
        attrs: _OptAttrs | None = None,
    ) -> dict[str, Any]:
        option = super().create_option(name, value, label, selected, index, subindex, attrs)
        description = self.descriptions.get(str(value))
        if description:
            option["attrs"]["title"] = description
        return option


class ConfigurationField(forms.JSONField):
    """Edit JSON indented, and say where malformed JSON went wrong."""

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str) and value.strip() and not self.disabled:
            try:
                json.loads(value, cls=self.decoder)
            except json.JSONDecodeError as exc:
                raise ValidationError(
                    _("Enter valid JSON: %(error)s (line %(line)d, column %(column)d)."),
                    code="invalid",
                    params={"error": exc.msg, "line": exc.lineno, "column": exc.colno},
                ) from None
            except RecursionError:
                raise ValidationError(
                    _("Enter JSON nested at most %(depth)d levels deep."),
                    code="invalid",
                    params={"depth": app_settings.MAX_JSON_DEPTH},
                ) from None
        return super().to_python(value)

    def bound_data(self, data: Any, initial: Any) -> Any:
        try:
            return super().bound_data(data, initial)
        except RecursionError:
            return forms.fields.InvalidJSONInput(data)

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value  # show what was typed, mistakes included
        text = json.dumps(value, indent=2, ensure_ascii=False, cls=self.encoder)
        try:
            text.encode()
        except UnicodeEncodeError:  # a lone surrogate, refused anyway: show it escaped
            text = json.dumps(value, indent=2, cls=self.encoder)
        return text


class DataFlowForm(_DataFlowModelForm):
    """The data flow form: ``flow`` chosen from the registered flows, JSON configuration.

    The model's own validation (``full_clean``) still runs, so the registered-flow, queue
    and JSON-object rules are enforced here exactly as everywhere else.
    """

    #: Whether the user may run the flow; without it, the form refuses making it due.
    may_run = True
    #: The flows offered as upstream flows (the admin gives those the user sees).
    upstream_choices: QuerySet[DataFlow] | None = None

    flow = forms.ChoiceField(label=_("Flow"), widget=FlowSelect)
    schedule_kind = forms.ChoiceField(
        label=_("Schedule kind"),
        choices=(
            ("interval", _("Every N seconds")),
            ("cron", _("Cron expression")),
            ("none", _("No schedule: after its upstream flows, or when started")),
        ),
        widget=forms.RadioSelect(attrs={"class": "dataflows-schedule-kind"}),
        required=False,
        help_text=_("The other kind's field is ignored (and cleared) when you save."),
    )

    class Meta:
        model = DataFlow
        fields = (
            "name",
            "description",
            "flow",
            "enabled",
            "run_interval",
            "cron",
            "timezone",
            "alert_after",
            "alert_emails",
            "disable_after_failures",
            "max_duration",
            "configuration",
            "queue",
            "max_retries",
            "timeout",
            "catchup",
            "upstream_flows",
            "wait_for",
        )
        field_classes = {"configuration": ConfigurationField}
        widgets = {
            "configuration": forms.Textarea(
                attrs={"rows": 10, "cols": 80, "class": "vLargeTextField dataflows-json"}
            ),
            "alert_emails": forms.Textarea(attrs={"rows": 2, "cols": 60}),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "flow" in self.fields:
            self._offer_registered_flows()
        upstream = self.fields.get("upstream_flows")
        if self.upstream_choices is not None and isinstance(
            upstream, forms.ModelMultipleChoiceField
        ):
            upstream.queryset = self.upstream_choices
        if "schedule_kind" in self.fields:
            self.fields["schedule_kind"].initial = (
                "cron"
                if self.instance.cron
                else "none"
                if self.instance.pk and self.instance.run_interval is None
                else "interval"
            )
        for name in ("wait_for", "catchup"):
            if name in self.fields:
                # A form posted without them (a script) keeps the stored or default value.
                self.fields[name].required = False
        if "upstream_flows" in self.fields:
            field = self.fields["upstream_flows"]
            assert isinstance(field, forms.ModelMultipleChoiceField)
            # Among the flows the user sees (the admin says which). The flow itself is
            # valid here so that choosing it (the autocomplete offers it) is refused by the
            # cycle check, which says why, rather than as an unknown choice.
            field.queryset = (
                DataFlow.objects.all() if self.upstream_choices is None else self.upstream_choices
            )

    def clean(self) -> dict[str, Any]:
        """Apply the schedule-kind switch: the other kind's field is emptied.

        Without the switch in the data (a script posting the form), both fields are kept
        and the model's rule (exactly one of the two) decides.
        """
        cleaned = super().clean() or {}
        self._check_run_permission(cleaned)
        kind = cleaned.get("schedule_kind")
        dropped = {"cron": ["run_interval"], "interval": ["cron"], "none": ["cron", "run_interval"]}
        for name in dropped.get(kind or "", []):
            if name in self.fields:
                cleaned[name] = None if name == "run_interval" else ""
                self.errors.pop(name, None)  # a mistake in a field that is switched off
        for name in ("wait_for", "catchup"):
            if name in self.fields and not cleaned.get(name):
                cleaned[name] = getattr(self.instance, name)
        upstreams = cleaned.get("upstream_flows")
        if upstreams is not None and self.instance.pk is not None:
            cycle = dependency_cycle(self.instance, upstreams)
            if cycle:
                self.add_error("upstream_flows", cycle_error(cycle))
        return cleaned

    def _check_run_permission(self, cleaned: dict[str, Any]) -> None:
        if self.may_run:
            return
        changes = {
            name: cleaned[name] for name in ("enabled", *WHAT_RUNS_FIELDS) if name in cleaned
        }
        before = self.instance if self.instance.pk else None
        for name in fields_that_make_due(before, changes):
            self.add_error(name, run_permission_message([name]))

    def _offer_registered_flows(self) -> None:
        field = self.fields["flow"]
        assert isinstance(field, forms.ChoiceField)
        flows = registered_flows()
        choices: list[tuple[str, str]] = [("", "---------")]
        for path, flow_class in flows.items():
            title = f"{flow_class.verbose_name} ({path})" if flow_class.verbose_name else path
            description = flow_class.describe()
            label = f"{title} — {Truncator(description).chars(80)}" if description else title
            choices.append((path, label))
        help_parts = [self._registered_flows_help(flows)]
        stored = self.instance.flow if self.instance.pk else ""
        if stored and not is_registered(stored):
            # Keep the stored value selected and say it is broken: silently switching the
            # select to another flow would change what the data flow runs on the next save.
            choices.append((stored, gettext("%(path)s (not registered)") % {"path": stored}))
            help_parts.insert(
                0,
                format_html(
                    '<strong class="dataflows-invalid">{}</strong>',
                    gettext(
                        "The stored flow %(path)s is not registered, so every run of this data "
                        "flow fails. Choose a registered flow, or deploy the code that defines it."
                    )
                    % {"path": stored},
                ),
            )
        field.choices = choices
        assert isinstance(field.widget, FlowSelect)
        field.widget.descriptions = {path: cls.describe() for path, cls in flows.items()}
        field.help_text = format_html_join("", "<div>{}</div>", ((part,) for part in help_parts))

    @staticmethod
    def _registered_flows_help(flows: dict[str, Any]) -> SafeString:
        if not flows:
            return format_html(
                "{}",
                gettext(
                    "No flows are registered. Define a subclass of django_dataflows.Flow in "
                    "an installed app's flows.py module."
                ),
            )
        items = format_html_join(
            "",
            "<li><code>{}</code>: {}</li>",
            ((path, cls.describe() or "—") for path, cls in flows.items()),
        )
        return format_html(
            '<details class="dataflows-flow-list"><summary>{}</summary><ul>{}</ul></details>',
            gettext("What each registered flow does"),
            items,
        )

    def clean_configuration(self) -> Any:
        # An empty box means "no configuration", not a missing value.
        value = self.cleaned_data.get("configuration")
        return {} if value is None else value


# -- backfills ----------------------------------------------------------------------------


class BackfillForm(forms.ModelForm):  # type: ignore[type-arg]
    """A new backfill: checked and recorded by ``DataFlow.backfill()`` (nothing else)."""

    force = forms.BooleanField(
        label=_("Force"), required=False, help_text=_("Allow more than 10,000 slots.")
    )

    class Meta:
        model = Backfill
        fields = ("data_flow", "start", "end", "rerun")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        data_flow, start, end = (cleaned.get(name) for name in ("data_flow", "start", "end"))
        if self.errors or data_flow is None or start is None or end is None:
            return cleaned
        try:
            self.created = data_flow.backfill(
                start,
                end,
                rerun=bool(cleaned.get("rerun")),
                user=getattr(self, "user", None),
                force=bool(cleaned.get("force")),
            )
        except ValidationError as exc:
            raise ValidationError(exc.messages) from exc
        return cleaned

    def _post_clean(self) -> None:
        # The backfill was checked and written by DataFlow.backfill(): no second validation.
        if hasattr(self, "created"):
            self.instance = self.created
