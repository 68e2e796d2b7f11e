"""Local infrastructure: a real Kafka broker (KRaft) and MinIO, run as background processes.

``tickcast infra up`` (or :class:`tickcast.infra.manager.InfraManager`) installs them into the
cache once, starts them under the state folder and waits until they are healthy.
"""
