"""The graph of a net before its layers are built, as Caffe's Net::Init and insert_splits.cpp prepare it:
the layers the NetState (phase, level, stages) admits, and Split layers inserted where one top feeds
several bottoms (each consumer gets its own copy, so the gradients flowing back are summed)."""
from collections import defaultdict

from ..errors import VggtoolError
from ..proto import caffe_pb2


def phase_value(phase):
    if isinstance(phase, str):
        try:
            return caffe_pb2.Phase.Value(phase.upper())
        except ValueError:
            raise VggtoolError(f"unknown phase '{phase}' (use TRAIN or TEST)") from None
    return int(phase)


def state_meets_rule(state, rule, layer_name):
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_net(net_param, state):
    """A copy of `net_param` keeping only the layers whose include/exclude rules admit `state`."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    for layer in net_param.layer:
        if len(layer.include) and len(layer.exclude):
            raise VggtoolError(f"layer '{layer.name}': specify either include rules or exclude rules, not both")
        if len(layer.include):
            keep = any(state_meets_rule(state, r, layer.name) for r in layer.include)
        else:
            keep = not any(state_meets_rule(state, r, layer.name) for r in layer.exclude)
        if keep:
            out.layer.add().CopyFrom(layer)
    return out


def split_layer_name(layer_name, blob_name, top_index):
    return f"{blob_name}_{layer_name}_{top_index}_split"


def split_blob_name(layer_name, blob_name, top_index, split_index):
    return f"{blob_name}_{layer_name}_{top_index}_split_{split_index}"


def insert_splits(net_param, source="net"):
    """Insert a Split layer after every top that feeds more than one consumer (a loss counts as one)."""
    layers = list(net_param.layer)
    last_producer = {}
    consumers = defaultdict(int)
    bottom_source = {}
    loss_weight_of = {}
    for i, layer in enumerate(layers):
        for j, name in enumerate(layer.bottom):
            if name not in last_producer:
                raise VggtoolError(f"{source}: layer '{layer.name}' ({layer.type}) has unknown bottom blob "
                                   f"'{name}' (bottom #{j}); no earlier layer produces it")
            src = last_producer[name]
            bottom_source[(i, j)] = src
            consumers[src] += 1
        for j, name in enumerate(layer.top):
            last_producer[name] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            src = last_producer[layer.top[j]]
            loss_weight_of[src] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                consumers[src] += 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    next_split = defaultdict(int)
    for i, layer in enumerate(layers):
        new = out.layer.add()
        new.CopyFrom(layer)
        for j, name in enumerate(layer.bottom):
            src = bottom_source[(i, j)]
            if consumers[src] > 1:
                src_layer = layers[src[0]]
                new.bottom[j] = split_blob_name(src_layer.name, name, src[1], next_split[src])
                next_split[src] += 1
        for j, name in enumerate(layer.top):
            count = consumers[(i, j)]
            if count <= 1:
                continue
            split = out.layer.add()
            split.name = split_layer_name(layer.name, name, j)
            split.type = "Split"
            split.bottom.append(name)
            weight = loss_weight_of.get((i, j), 0)
            for k in range(count):
                split.top.append(split_blob_name(layer.name, name, j, k))
                # A loss-weighted top moves its weight to the split's first output.
                split.loss_weight.append(weight if (k == 0 and weight) else 0)
            if weight:
                del new.loss_weight[:]
                next_split[(i, j)] = 1
            else:
                del split.loss_weight[:]
    return out
