"""Nets written in Python (pycaffe's net_spec): `L.Convolution(n.data, kernel_size=5, num_output=20)`
builds a layer, NetSpec names its tops, to_proto() gives the NetParameter.

Keyword arguments go to the layer's own `<type>_param` message when it has that field, else to the
LayerParameter (name, loss_weight, include, ...); a kwarg ending in `param` is always a LayerParameter
field. Lists become repeated fields, dicts become messages. `ntop=k` gives k tops; `in_place=True` writes
the top over the bottom.
"""
from collections import Counter, OrderedDict

from ..errors import VggtoolError
from ..proto import caffe_pb2


def param_name_dict():
    """{layer type: its parameter field stem}, e.g. 'InnerProduct' -> 'inner_product', from the messages
    the LayerParameter's *_param fields hold."""
    out = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                out[type_name[:-len("Parameter")]] = field.name[:-len("_param")]
    return out


_param_names = param_name_dict()


def assign_proto(proto, name, val):
    """Set field `name` of `proto` from a Python value: lists to repeated fields (a single value to a
    repeated field becomes a one-element list), dicts to messages, everything else assigned."""
    field = getattr(proto, name)
    repeated = hasattr(field, "extend")
    if repeated and not isinstance(val, (list, tuple)):
        val = [val]
    if isinstance(val, (list, tuple)):
        if len(val) and isinstance(val[0], dict):
            for item in val:
                sub = field.add()
                for k, v in item.items():
                    assign_proto(sub, k, v)
        else:
            field.extend(val)
    elif isinstance(val, dict):
        for k, v in val.items():
            assign_proto(field, k, v)
    else:
        setattr(proto, name, val)


def to_proto(*tops):
    """A NetParameter with every layer needed to compute `tops` (names generated)."""
    layers = OrderedDict()
    autonames = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class Top:
    """One output blob of a layer function (output `n` of `fn`)."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """A layer: its type, input Tops and parameters."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for index, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise TypeError(f"{type_name} input {index} is not a Top (type is {type(inp)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names, autonames):
        if self not in names:
            if self.ntop > 0:
                names[self] = self._get_top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottoms.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._get_top_name(top, names, autonames) for top in self.tops)
        layer.name = self._get_name(names, autonames)
        for k, v in self.params.items():
            if k.endswith("param"):
                assign_proto(layer, k, v)
                continue
            stem = _param_names.get(self.type_name)
            message = getattr(layer, stem + "_param") if stem else None
            if message is not None and k in message.DESCRIPTOR.fields_by_name:
                assign_proto(message, k, v)
            elif k in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name:
                assign_proto(layer, k, v)
            else:
                raise VggtoolError(f"layer {layer.name} ({self.type_name}): '{k}' is neither a field of "
                                   f"{stem + '_param' if stem else 'its parameters'} nor of LayerParameter")
        layers[self] = layer


class NetSpec:
    """Tops assigned as attributes (n.conv1 = L.Convolution(...)) name their blobs and layers;
    to_proto() gives the NetParameter of everything needed to compute them."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key, value):
        self.__setattr__(key, value)

    def __getitem__(self, item):
        return self.tops[item]

    def to_proto(self):
        names = {v: k for k, v in self.tops.items()}
        autonames = Counter()
        layers = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """`layers.AnyType(*bottoms, **params)`: a Top (or a tuple of ntop Tops; the Function if ntop=0)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops

        return layer_fn


class Parameters:
    """`params.Pooling.MAX`: the enum values of caffe_pb2.<Name>Parameter."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        message = getattr(caffe_pb2, name + "Parameter")

        class Param:
            def __getattr__(self, param_name):
                return getattr(message, param_name)

        return Param()


layers = Layers()
params = Parameters()
