"""`python -m fake_posthog`: serve a fake PostHog until killed."""

from fake_posthog import main

main()
