"""Tests share one Qdrant server: each test's collections carry its own name prefix, and go when
the test ends (aliases first, since an alias pins its collection)."""

from __future__ import annotations

from qdrant_client import QdrantClient, models


def drop_prefixed(url: str, prefix: str, api_key: str | None = None) -> None:
    client = QdrantClient(url=url, api_key=api_key, check_compatibility=False)
    try:
        ours = [
            a.alias_name for a in client.get_aliases().aliases if a.alias_name.startswith(prefix)
        ]
        if ours:
            client.update_collection_aliases(
                change_aliases_operations=[
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=name))
                    for name in ours
                ]
            )
        for collection in client.get_collections().collections:
            if collection.name.startswith(prefix):
                client.delete_collection(collection.name)
    finally:
        client.close()
