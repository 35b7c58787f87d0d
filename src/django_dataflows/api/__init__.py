"""The REST API (Django REST framework), behind the ``api`` extra.

``path("dataflows/api/", include("django_dataflows.api.urls"))`` in the host project's URLs;
``rest_framework`` and ``django_filters`` (and ``drf_spectacular`` for the Swagger UI page)
in ``INSTALLED_APPS``. Nothing outside this package imports it, so the core works without
Django REST framework installed.
"""

from __future__ import annotations
