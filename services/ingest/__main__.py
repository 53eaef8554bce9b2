"""``python -m services.ingest``: run the HTTP ingest service."""

from services.ingest.app import main

if __name__ == "__main__":
    main()
