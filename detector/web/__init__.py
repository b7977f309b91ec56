"""The web demo: a Flask app (``create_app``) serving one model's JSON API and its page.

Server code, templates and static files live together here; ``tools/serve.py`` runs it.
"""

from detector.web.app import DetectionService, create_app
from detector.web.samples import sample_images
from detector.web.server import make_server, server_url
from detector.web.uploads import DEFAULT_MAX_PIXELS, UploadError, decode_upload

__all__ = ["DEFAULT_MAX_PIXELS", "DetectionService", "UploadError", "create_app",
           "decode_upload", "make_server", "sample_images", "server_url"]
