"""Time the solver's per-iteration update (clip, normalise, regularise, update rule, apply) for a parameter
set of a given size, per solver type. Prints ms per update and parameter throughput; not a test.

    PYTHONPATH=. python bench/bench_solver_update.py [--params 20e6] [--gpu 0]
"""
import argparse
import time

from google.protobuf import text_format

from vggtool import backend
from vggtool.io import prototxt
from vggtool.proto import caffe_pb2
from vggtool.solvers import Solver
from vggtool.solvers.glog import GLog


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=float, default=20e6, help="number of learnable values")
    ap.add_argument("--gpu", default=None)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    device = backend.parse_devices(args.gpu)[0]
    width = 1000
    rows = int(args.params) // width
    net = prototxt.parse_net_text(f"""
layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 1 dim: {width} }} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param {{ num_output: {rows} }} }}
""")
    for kind, extra in [("SGD", "momentum: 0.9"), ("Nesterov", "momentum: 0.9"), ("AdaGrad", ""),
                        ("RMSProp", ""), ("AdaDelta", "momentum: 0.95"), ("Adam", "momentum: 0.9")]:
        param = text_format.Parse(f'type: "{kind}" base_lr: 0.01 lr_policy: "fixed" weight_decay: 0.0005 '
                                  f'clip_gradients: 1000 {extra}', caffe_pb2.SolverParameter())
        param.net_param.CopyFrom(net)
        solver = Solver(param, device=device, log=GLog(stream=False))
        for lp in solver.net.learnable_params:
            lp.blob.diff[...] = 0.001
        solver.apply_update()
        device.synchronize()
        t = time.perf_counter()
        for _ in range(args.repeat):
            solver.apply_update()
        device.synchronize()
        ms = (time.perf_counter() - t) / args.repeat * 1e3
        n = solver.net.num_params()
        print(f"{kind:9s} {n / 1e6:7.1f} M params on {device.name}: {ms:8.1f} ms/update, "
              f"{n / ms / 1e6:6.2f} G params/s")


if __name__ == "__main__":
    main()
