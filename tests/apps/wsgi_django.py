"""A single-file Django test app: ``request.body`` and ``request.FILES`` of an upload, as received."""

import hashlib

from django.conf import settings

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="test only",
    DATA_UPLOAD_MAX_MEMORY_SIZE=None,  # request.body of a 20 MB upload
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)

from django.core.wsgi import get_wsgi_application  # noqa: E402 (after settings)
from django.http import FileResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


def summary(data):
    return JsonResponse({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})


@csrf_exempt
def upload(request):
    return summary(request.body)


@csrf_exempt
def files(request):
    return summary(request.FILES["file"].read())


def download(request):
    """A file (FILE_TO_SEND) as Django serves one: FileResponse, through wsgi.file_wrapper when there is one."""
    import os

    return FileResponse(open(os.environ["FILE_TO_SEND"], "rb"))  # FileResponse closes it


urlpatterns = [path("upload", upload), path("files", files), path("download", download)]
app = get_wsgi_application()
