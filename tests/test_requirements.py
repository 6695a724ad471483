"""requirements.txt must not replace a user's CUDA build of torch; CI pins the CPU wheel on top of it."""
import os

from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def requirements(path):
    lines = (line.split("#")[0].strip() for line in open(os.path.join(ROOT, path)))
    return {req.name: req for req in map(Requirement, filter(None, lines))}


def test_torch_is_a_lower_bound_and_ci_pins_a_version_that_meets_it():
    torch_req = requirements("requirements.txt")["torch"]
    assert not any(spec.operator in ("==", "===", "~=") for spec in torch_req.specifier), torch_req
    pins = requirements(".ci/constraints.txt")
    assert set(pins) <= set(requirements("requirements.txt"))
    pinned = next(iter(pins["torch"].specifier)).version
    assert torch_req.specifier.contains(pinned)
    assert "-r requirements.txt -c .ci/constraints.txt" in open(os.path.join(ROOT, ".ci/run")).read()


def test_triton_is_asked_for_only_where_it_installs():
    # Triton publishes wheels for Linux only: on macOS or Windows `pip install -r requirements.txt` must not ask
    # for it (the plain PyTorch paths run there), on Linux it must (the GPU kernels, and their tests)
    reqs = requirements("requirements.txt")
    wanted = lambda req, platform: req.marker is None or req.marker.evaluate({"sys_platform": platform})
    assert wanted(reqs["triton"], "linux")
    assert not wanted(reqs["triton"], "darwin") and not wanted(reqs["triton"], "win32")
    # everything else installs everywhere
    assert all(wanted(req, platform) for name, req in reqs.items() if name != "triton"
               for platform in ("linux", "darwin", "win32"))
