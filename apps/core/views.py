from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, JsonResponse

from .middleware import api_error, is_api_path


@login_required
def home(request):
    return HttpResponse("ok")


def not_found(request, exception=None):
    if is_api_path(request.path):
        return api_error(404, "not_found", "Not found.")
    return HttpResponse("Not found", status=404)


def server_error(request):
    if is_api_path(request.path):
        return api_error(500, "server_error", "An internal error occurred; it has been logged.")
    return JsonResponse({}, status=500)
