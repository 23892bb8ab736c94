"""polyplib: the library behind the polyp synthetic-data study notebooks.

The notebooks narrate; this package does the work. One module per concern:
``config`` (typed profiles), ``runs`` (run folders, done-markers, atomic writes),
``data`` (phantom, real loaders, download, splits, preparation) and one package per later stage.
"""
import os as _os

__version__ = "0.1.0"

#: The study never reaches the network unless a download is asked for: libraries that would look
#: for updates, telemetry or hub files at import time are told not to (a user's own setting wins).
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",                 # diffusers / huggingface_hub: no hub lookups
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",       # albumentations asks pypi.org for a newer version on import
}
for _key, _value in OFFLINE_ENVIRONMENT.items():
    _os.environ.setdefault(_key, _value)
