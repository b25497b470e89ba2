"""TensorFlow engines: AMB/FMB gradients (engine.py) on the original system's networks (models.py).

Importing this package does not import TensorFlow: the CLI validates model names from here at no cost.
"""

MODELS = ("digits-cnn", "mlp", "mnist", "cifar10", "toy-conv", "toy-fc")
#: the model each dataset gets unless --model says otherwise
DEFAULT_MODEL = {
    "digits": "digits-cnn", "iris": "mlp", "toy": "toy-conv",
    "mnist": "mnist", "fashion-mnist": "mnist", "cifar10": "cifar10",
}
#: the input shape of each model's own dataset (what the studies feed it as random data)
MODEL_INPUT = {
    "digits-cnn": (8, 8, 1), "mlp": (4,), "mnist": (28, 28, 1), "cifar10": (32, 32, 3),
    "toy-conv": (100,), "toy-fc": (100,),
}
