import torch
from torch import nn

import revnet

net = revnet.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 12 * 12, 10))
x = torch.randn(4, 1, 28, 28)
logits, tape = net.trace(x)  # forward pass + tape (ReLU masks, pooling indices, shapes)
eye = torch.eye(10).expand(4, 10, 10)  # one cotangent per class, (N, K, classes)
grads = net.reverse(eye, tape)  # (4, 10, 1, 28, 28): d logit_k / d x for all 10 classes at once
print("input gradients:", tuple(grads.shape))
print(net.reversed())
