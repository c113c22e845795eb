"""Alert hooks: the notifier sends each alert to the webhooks, Alertmanager and bus topic that route it.

``signature`` is the webhook signature scheme receivers verify; ``notifier`` consumes the ``alerts`` topic;
``api`` lists and retries dead-lettered notifications.
"""
