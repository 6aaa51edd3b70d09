"""The notification service: email, SMS, push, chat and in-app messages (issue 19)."""
