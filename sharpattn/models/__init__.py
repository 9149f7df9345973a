"""The SAN models (SAN section IV-B) on a torchvision ResNet-50 backbone.

    from sharpattn.models import san_resnet50
    model = san_resnet50()              # SAN: blocks 1-4, context units on 1-3, CIL, TV
    baseline = san_resnet50(blocks=())  # plain ResNet-50 with the same embedding head

    from sharpattn.models import AAANetResNet50
    aaa = AAANetResNet50(num_classes=751)  # AAA-Net: occlusion after conv module 3 (layer2)
"""

from .aaanet import AAANetResNet50, true_class_probability
from .params import context_unit_parameters, extra_parameters, parameter_report
from .san import SANResNet50, embedding_head, san_resnet50
from .weights import load_imagenet_weights

__all__ = ["AAANetResNet50", "SANResNet50", "context_unit_parameters", "embedding_head",
           "extra_parameters", "load_imagenet_weights", "parameter_report", "san_resnet50",
           "true_class_probability"]
