"""Routes that move model bytes: uploads, manifests, downloads, imports (views in transfer.py)."""

from django.urls import re_path

from . import transfer

urlpatterns = [
    re_path(r"^uploads/?$", transfer.UploadViewSet.as_view({"post": "create"}), name="registry-upload-list"),
    re_path(
        r"^uploads/(?P<pk>[^/]+)/?$",
        transfer.UploadViewSet.as_view({"get": "retrieve"}),
        name="registry-upload-detail",
    ),
    re_path(
        r"^uploads/(?P<pk>[^/]+)/complete/?$",
        transfer.UploadViewSet.as_view({"post": "complete"}),
        name="registry-upload-complete",
    ),
    re_path(
        r"^uploads/(?P<pk>[^/]+)/files/(?P<index>[^/]+)/parts/(?P<number>[^/]+)/?$",
        transfer.UploadPartView.as_view(),
        name="registry-upload-part",
    ),
    re_path(r"^manifest/?$", transfer.ManifestByRefView.as_view(), name="registry-manifest"),
    re_path(
        r"^versions/(?P<pk>[^/]+)/manifest/?$", transfer.VersionManifestView.as_view(), name="registry-version-manifest"
    ),
    re_path(
        r"^versions/(?P<pk>[^/]+)/files/(?P<path>.+)$", transfer.VersionFileView.as_view(), name="registry-version-file"
    ),
    re_path(r"^imports/?$", transfer.ImportViewSet.as_view({"post": "create"}), name="registry-import-list"),
]
