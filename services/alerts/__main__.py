"""``python -m services.alerts``: run the alerts worker until SIGTERM."""

from services.alerts.app import main

if __name__ == "__main__":
    main()
