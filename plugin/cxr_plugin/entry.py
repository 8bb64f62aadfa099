"""Orthanc's entry point (``"PythonScript": ".../plugin/cxr_plugin/entry.py"``): glue only.

Configuration, from the Orthanc configuration's ``"Cxr"`` section, else the environment:
``ServiceUrl`` (``CXR_SERVICE_URL``, default http://127.0.0.1:8000) and ``ApiToken``
(``CXR_API_TOKEN``).
"""

import json
import logging
import os
import sys

import orthanc

_PLUGIN_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) if "__file__" in globals() else os.environ.get("CXR_PLUGIN_ROOT", "")
if _PLUGIN_ROOT and _PLUGIN_ROOT not in sys.path:
    sys.path.insert(0, _PLUGIN_ROOT)

from cxr_plugin.core import CxrPlugin, ServiceClient, ServiceConfig  # noqa: E402


class OrthancLogHandler(logging.Handler):
    """Plugin log records go to Orthanc's own log."""

    def emit(self, record):
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            orthanc.LogError(message)
        elif record.levelno >= logging.WARNING:
            orthanc.LogWarning(message)
        else:
            orthanc.LogInfo(message)


class OrthancRestApi:
    """:class:`cxr_plugin.core.OrthancApi` over the ``orthanc`` module."""

    def get_json(self, uri):
        return json.loads(orthanc.RestApiGet(uri))

    def get_text(self, uri):
        answer = orthanc.RestApiGet(uri)
        return answer.decode("utf-8", "replace") if isinstance(answer, bytes) else str(answer)

    def put(self, uri, body):
        orthanc.RestApiPut(uri, body)


def _configure():
    config = json.loads(orthanc.GetConfiguration()).get("Cxr", {})
    url = config.get("ServiceUrl") or os.environ.get("CXR_SERVICE_URL", "http://127.0.0.1:8000")
    token = config.get("ApiToken") or os.environ.get("CXR_API_TOKEN", "")
    return ServiceConfig(url=url, token=token)


_log = logging.getLogger("cxr_plugin")
_log.setLevel(logging.INFO)
_log.addHandler(OrthancLogHandler())
_log.propagate = False
_plugin = CxrPlugin(OrthancRestApi(), ServiceClient(_configure()))


def on_change(change_type, level, resource_id):
    if change_type == orthanc.ChangeType.STABLE_STUDY:
        _plugin.notify_stable_study(resource_id)
    elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
        _plugin.start()
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        _plugin.stop()


def on_analyze(output, uri, **request):
    if request.get("method") != "POST":
        output.SendMethodNotAllowed("POST")
        return
    orthanc_id = request["groups"][0]
    try:
        orthanc.RestApiGet(f"/studies/{orthanc_id}")
    except orthanc.OrthancException:
        body = json.dumps({"detail": f"no study {orthanc_id}"})
        output.SendHttpStatus(404, body, len(body))
        return
    _plugin.request_analysis(orthanc_id)
    output.AnswerBuffer(json.dumps({"study": orthanc_id, "status": "queued"}), "application/json")


orthanc.RegisterOnChangeCallback(on_change)
orthanc.RegisterRestCallback("/cxr/studies/([0-9a-f-]+)/analyze", on_analyze)
_log.info("cxr plugin loaded (service %s)", _plugin.service.config.url)
