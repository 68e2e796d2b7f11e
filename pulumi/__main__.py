"""tickcast on AWS: VPC, EKS (CPU and GPU nodes), S3 lake, MSK, ECR, IRSA, and the Helm releases.

The program is in the ``tickcast_infra`` package; see README.md for the deployment guide.
"""

from tickcast_infra import config, stack

stack.export(stack.build(config.load()))
