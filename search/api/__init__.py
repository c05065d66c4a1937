"""bitsearch's HTTP API (FastAPI): create and launch studies, query progress, candidates, Pareto
fronts and exports. Every write needs a bearer token; reads too unless `open_reads`.

    from search.api import create_app
    app = create_app("sqlite:///bitsearch.db", token="s3cret", model_roots=["/models"])
    # or: BITSEARCH_TOKEN=s3cret bitsearch serve --model-root /models
"""

from search.api.app import MAX_BODY_BYTES, create_app

__all__ = ["MAX_BODY_BYTES", "create_app"]
