"""PyTorch engines: the flat-buffer engine (engine.py) on the originals' networks and torchvision's (models.py).

Importing this package does not import torch: the CLI checks model names from here at no cost. Any
`torchvision.models` classification builder is accepted by name as well (models.torchvision_names(), which imports
torchvision), and so is a user's `path/to/file.py:build` (backends/user_model.py).
"""

MODELS = (
    "digits-cnn", "mlp", "mnist", "cifar10", "toy-conv", "toy-fc",  # the TensorFlow backend's, same architectures
    "resnet9", "alexnet-small", "alexnet-fc",  # the compression study's (ResNet9, its two AlexNet-like nets)
    "preact-resnet18", "mnist-mlp", "iris-mlp",  # the gossip study's
    "resnet18", "resnet34", "resnet50", "resnet101",  # torchvision's, as the dynamic-batching code used them
)
#: the model each dataset gets unless --model says otherwise
DEFAULT_MODEL = {
    "digits": "digits-cnn", "iris": "mlp", "toy": "toy-conv",
    "mnist": "mnist", "fashion-mnist": "mnist", "cifar10": "cifar10",
}
#: the input shape of each model's own dataset
MODEL_INPUT = {
    "digits-cnn": (8, 8, 1), "mlp": (4,), "mnist": (28, 28, 1), "cifar10": (32, 32, 3), "toy-conv": (100,),
    "toy-fc": (100,), "resnet9": (32, 32, 3), "alexnet-small": (32, 32, 3), "alexnet-fc": (32, 32, 3),
    "preact-resnet18": (32, 32, 3), "mnist-mlp": (28, 28, 1), "iris-mlp": (4,), "resnet18": (32, 32, 3),
    "resnet34": (32, 32, 3), "resnet50": (32, 32, 3), "resnet101": (32, 32, 3),
}
