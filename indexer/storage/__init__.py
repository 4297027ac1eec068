"""Where an index lives: rows and vectors behind one interface (`PhotoIndex`).

- `folder.FolderIndex`: SQLite rows + a FAISS file in one folder (the default, no server);
- `postgres.PostgresIndex`: rows and pgvector vectors in one Postgres database (the `[postgres]` extra).

`PhotoIndex.open(location)` picks by location: a postgresql:// URL or a folder.
"""

from indexer.storage.base import Consistency, IndexSettings, PhotoIndex, VectorIndex, display_location, is_database_url
from indexer.storage.folder import FolderIndex  # noqa: E402 - registers the implementations
from indexer.storage.postgres import PostgresIndex

__all__ = ["Consistency", "FolderIndex", "IndexSettings", "PhotoIndex", "PostgresIndex", "VectorIndex", "display_location", "is_database_url"]
