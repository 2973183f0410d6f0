"""The emulator's datasets service: `kaggle datasets list` and `kaggle datasets files`.

In:  request bodies of datasets.DatasetApiService calls; the datasets root (a dataset is the
     folder <root>/<dataset-slug>, whatever its owner, as kernels attach them).
Out: reply dicts (camelCase) or `ApiError`s: a dataset that does not exist answers 403
     "Permission 'datasets.get' was denied" (404 in kind mode), as kaggle.com does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kit.kaggle.emulator.errors import ApiError
from kit.kaggle.emulator.state import EmulatorState, iso, page

DATASET_OWNER = "kit"
PAGE_SIZE = 20
MODELS_FOLDER = "models"


class DatasetsService(EmulatorState):
    """datasets.DatasetApiService on top of the datasets root (a mixin of the Emulator)."""

    url: str

    def _dataset_dirs(self) -> list[Path]:
        root = Path(self.settings.datasets_root)
        return sorted(p for p in root.iterdir() if p.is_dir() and p.name != MODELS_FOLDER) if root.is_dir() else []

    def list_datasets(self, body: Mapping[str, Any]) -> dict[str, Any]:
        search = str(body.get("search") or "").lower()
        rows = []
        for folder in self._dataset_dirs():
            if search and search not in folder.name.lower():
                continue
            files = [p for p in folder.rglob("*") if p.is_file()]
            rows.append({"id": len(rows) + 1, "ref": f"{DATASET_OWNER}/{folder.name}", "title": folder.name,
                         "totalBytes": sum(p.stat().st_size for p in files), "url":
                         f"{self.url}/datasets/{DATASET_OWNER}/{folder.name}",
                         "lastUpdated": iso(folder.stat().st_mtime), "downloadCount": 0, "voteCount": 0,
                         "usabilityRating": 1.0, "ownerName": DATASET_OWNER, "ownerRef": DATASET_OWNER})
        return page(rows, body, "datasets", PAGE_SIZE)

    def list_dataset_files(self, body: Mapping[str, Any]) -> dict[str, Any]:
        slug = str(body.get("datasetSlug") or "")
        folder = Path(self.settings.datasets_root) / slug
        if not slug or "/" in slug or slug.startswith(".") or not folder.is_dir():
            if self.realism.hidden_is_403:
                raise ApiError(403, "Permission 'datasets.get' was denied")
            raise ApiError(404, f"Dataset {body.get('ownerSlug')}/{slug} not found")
        files = [{"name": p.relative_to(folder).as_posix(), "totalBytes": p.stat().st_size,
                  "creationDate": iso(p.stat().st_mtime)} for p in sorted(folder.rglob("*")) if p.is_file()]
        return page(files, body, "datasetFiles", PAGE_SIZE)
