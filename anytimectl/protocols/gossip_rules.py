"""The rules `train gossip --method` names and the validation split per dataset: plain data, so that the command
(and its `--help`) reads them without importing the protocol (numpy, the engine contract)."""

METHODS = ("local", "nocomm", "allreduce", "elastic", "gossip")
#: The original's --agg-method spellings.
METHOD_ALIASES = {"noComm": "nocomm", "gradAllReduce": "allreduce", "elasticGossip": "elastic",
                  "gossipingSgd": "gossip"}

#: Examples held out of the training split for validation, per dataset (the original's mnist 8800, cifar10 5200,
#: iris 25; digits 237 so that 1200 training examples remain, divisible by 2, 3, 4, 5, 6, 8, 10, 12, 15, 16).
VALIDATION_SIZES = {"digits": 237, "iris": 25, "mnist": 8800, "fashion-mnist": 8800, "cifar10": 5200, "toy": 1024}
