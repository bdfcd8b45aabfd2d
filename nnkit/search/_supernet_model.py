"""The Keras model of `OneShotSupernet`: the largest Conv1D staged network, run as any of its paths.

The model holds one weight per op at its largest size: stage ``i``'s first
and second convolutions (``max kernel × max input channels × max
channels``), its 1×1 shortcut projection, and one logits head per (depth,
head) option. A *path* (one architecture of the space) is an integer fed
with the data; the model looks up its masks and runs that architecture:
the first ``c`` output channels of each convolution are kept (the others
multiplied by 0, which equals slicing the weights to ``[:, :c_in, :c]``),
a kernel of size ``k`` is the centre ``k`` taps of the largest kernel,
stages beyond the path's depth and options it does not take are computed
but contribute exactly zero to its logits and its gradient. Masks instead
of slices keep one compiled graph for every path (no retrace per
architecture), so `fit` runs unchanged on TensorFlow and JAX; each row of a
batch may carry its own path.

Private: `OneShotSupernet` (``nnkit.search.supernet``) is the public face.
"""

import keras
import numpy as np
from keras import ops

from nnkit._arrays import to_numpy


def stage_key(stage, name):
    """The architecture key of stage ``stage``'s choice ``name`` (``stage_0_channels``)."""
    return "stage_" + str(stage) + "_" + name


def halvings(length, times):
    """The sequence length after ``times`` downsamplings by 2 with ``"same"`` padding."""
    for _ in range(times):
        length = -(-length // 2)
    return length


class SupernetModel(keras.Model):
    """The shared weights and the masked forward pass (inputs ``{"x", "path"}``, logits out)."""

    def __init__(self, options, codes, input_shape, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.options = options
        self.codes = {name: np.asarray(table, "float32") for name, table in codes.items()}
        self.length = int(input_shape[0])
        self.in_channels = int(input_shape[1]) if len(input_shape) > 1 else 1
        self.num_classes = int(num_classes)
        stages = max(options["stages"])
        width = max(options["channels"])
        kernel = max(options["kernels"])
        self.width, self.kernel = width, kernel
        self.conv1, self.bias1, self.conv2, self.bias2, self.project = [], [], [], [], []
        for i in range(stages):
            fan_in = self.in_channels if i == 0 else width
            self.conv1.append(
                self.add_weight(
                    (kernel, fan_in, width), name=f"supernet_stage_{i}_conv1", aggregation="none"
                )
            )
            self.bias1.append(
                self.add_weight(
                    (width,), "zeros", name=f"supernet_stage_{i}_bias1", aggregation="none"
                )
            )
            if True in options["residual"]:
                self.conv2.append(
                    self.add_weight(
                        (kernel, width, width), name=f"supernet_stage_{i}_conv2", aggregation="none"
                    )
                )
                self.bias2.append(
                    self.add_weight(
                        (width,), "zeros", name=f"supernet_stage_{i}_bias2", aggregation="none"
                    )
                )
                self.project.append(
                    self.add_weight(
                        (1, fan_in, width), name=f"supernet_stage_{i}_project", aggregation="none"
                    )
                )
        self.heads = []
        for depth in options["stages"]:
            for head in options["head"]:
                features = width * (halvings(self.length, depth) if head == "flatten" else 1)
                kernel_w = self.add_weight(
                    (features, self.num_classes),
                    name=f"supernet_head_{depth}_{head}_weights",
                    aggregation="none",
                )
                bias = self.add_weight(
                    (self.num_classes,),
                    "zeros",
                    name=f"supernet_head_{depth}_{head}_bias",
                    aggregation="none",
                )
                self.heads.append((depth, head, kernel_w, bias))

    def _code(self, name, path):
        return ops.take(ops.convert_to_tensor(self.codes[name]), path, axis=0)

    def _conv(self, x, kernel, kernels_onehot, stride):
        """``x`` convolved with the centre taps of ``kernel`` that each row's path takes."""
        out = 0.0
        for j, size in enumerate(self.options["kernels"]):
            start = (self.kernel - size) // 2
            y = ops.conv(x, kernel[start : start + size], strides=stride, padding="same")
            if len(self.options["kernels"]) == 1:
                return y
            out = out + kernels_onehot[:, j, None, None] * y
        return out

    def _stage(self, x, i, code, downsample):
        mask = code["channels"][:, i, None, :]
        kernels = code["kernels"][:, i, :]
        stride = 2 if downsample == "stride" else 1
        h = ops.relu(self._conv(x, self.conv1[i], kernels, stride) + self.bias1[i]) * mask
        if self.conv2:
            r = (self._conv(h, self.conv2[i], kernels, 1) + self.bias2[i]) * mask
            shortcut = x if stride == 1 else ops.average_pool(x, 2, 2, padding="same")
            projected = ops.conv(shortcut, self.project[i], padding="same") * mask
            if shortcut.shape[-1] != self.width:  # stage 0: the identity needs the full width
                shortcut = ops.pad(shortcut, [[0, 0], [0, 0], [0, self.width - shortcut.shape[-1]]])
            p = code["project"][:, i, None, None]
            residual = ops.relu(r + p * projected + (1.0 - p) * shortcut)
            res = code["residual"][:, None, None]
            h = res * residual + (1.0 - res) * h
        if downsample == "max":
            h = ops.max_pool(h, 2, 2, padding="same")
        return h

    def call(self, inputs):
        x = ops.convert_to_tensor(inputs["x"], "float32")
        path = ops.reshape(ops.cast(inputs["path"], "int32"), (-1,))
        if len(x.shape) == 2:
            x = ops.expand_dims(x, -1)
        code = {name: self._code(name, path) for name in self.codes}
        outputs = []
        for i in range(max(self.options["stages"])):
            branches = [self._stage(x, i, code, d) for d in self.options["downsample"]]
            if len(branches) == 1:
                x = branches[0]
            else:
                x = sum(code["downsample"][:, j, None, None] * b for j, b in enumerate(branches))
            outputs.append(x)
        logits = 0.0
        for j, (depth, head, kernel, bias) in enumerate(self.heads):
            features = outputs[depth - 1]
            if head == "avg":
                features = ops.mean(features, axis=1)
            elif head == "max":
                features = ops.max(features, axis=1)
            else:
                features = ops.reshape(features, (-1, features.shape[1] * features.shape[2]))
            logits = logits + code["head"][:, j, None] * (ops.matmul(features, kernel) + bias)
        return logits

    def path_weights(self, arch):
        """The weights of ``arch``'s standalone model, in the order ``space.build`` creates them."""
        # Not ``get_weights``: it warns under numpy 2 (see nnkit._arrays).
        values = {id(w): to_numpy(w) for w in self.weights}

        def _numpy(variable):
            return values[id(variable)]

        found = []
        channels_in = self.in_channels
        for i in range(arch["stages"]):
            c = arch[stage_key(i, "channels")]
            k = arch[stage_key(i, "kernel")]
            start = (self.kernel - k) // 2
            taps = slice(start, start + k)
            found += [
                _numpy(self.conv1[i])[taps, :channels_in, :c],
                _numpy(self.bias1[i])[:c],
            ]
            if arch["residual"]:
                found += [
                    _numpy(self.conv2[i])[taps, :c, :c],
                    _numpy(self.bias2[i])[:c],
                ]
                if channels_in != c:
                    found.append(_numpy(self.project[i])[:, :channels_in, :c])
            channels_in = c
        for depth, head, kernel, bias in self.heads:
            if depth == arch["stages"] and head == arch["head"]:
                kernel = _numpy(kernel)
                if head == "flatten":
                    length = halvings(self.length, depth)
                    kernel = kernel.reshape(length, self.width, -1)[:, :channels_in, :]
                    kernel = kernel.reshape(length * channels_in, -1)
                else:
                    kernel = kernel[:channels_in]
                found += [kernel, _numpy(bias)]
        return found
