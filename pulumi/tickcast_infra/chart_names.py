"""Names the Pulumi program shares with the tickcast chart (``helm/tickcast``): the one place.

The program installs the chart as release :data:`RELEASE_NAME`, then reads objects the chart
renders back by name (the dashboard Ingress for ``dashboardUrl``, the RayService's Serve
Service for ``serveEndpoint``), and trusts each workload's IRSA role to exactly one
ServiceAccount name. The chart names its objects ``<fullname>-<component>``, and its fullname
is the release name when that contains the chart's name, so these are the chart's names for
this release.

Plain Python with no imports on purpose: ``tests/helm/test_chart.py`` loads this file on its
own (without Pulumi) and renders the chart for :data:`RELEASE_NAME` to prove the chart
produces exactly these names; ``pulumi/tests`` prove the program uses them.
"""

RELEASE_NAME = "tickcast"
"""Helm release name of the tickcast chart."""

DASHBOARD_INGRESS_NAME = f"{RELEASE_NAME}-dashboard"
"""The chart's dashboard Ingress; its load balancer's host name is ``dashboardUrl``."""

RAY_SERVICE_NAME = f"{RELEASE_NAME}-serving"
"""The chart's RayService."""

SERVE_SERVICE_NAME = f"{RAY_SERVICE_NAME}-serve-svc"
"""The Service KubeRay creates for the RayService's Serve endpoint (``<rayservice>-serve-svc``)."""

SERVE_PORT = 8000
"""Serve's HTTP port: the chart's ``config.serving.port`` default, which the program leaves alone."""

CHART_WORKLOADS: dict[str, str] = {
    "producer": "producer",
    "consumer": "consumer",
    "forecaster": "forecaster",
    "dashboard": "dashboard",
    "rayService": "serving",
    "jobs": "batch",
    "maintenance": "maintenance",
}
"""Chart values section -> the workload (IAM role, ServiceAccount) its pods run as."""


def service_account_name(workload: str) -> str:
    """The Kubernetes ServiceAccount a workload runs as, e.g. ``tickcast-producer``.

    Also the chart's default for the release :data:`RELEASE_NAME` (``<fullname>-<workload>``).
    """
    return f"{RELEASE_NAME}-{workload}"


def serve_endpoint(namespace: str) -> str:
    """The in-cluster URL of Serve for a release in ``namespace``."""
    return f"http://{SERVE_SERVICE_NAME}.{namespace}.svc:{SERVE_PORT}"
