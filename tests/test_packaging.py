"""`pip install .` (non-editable) ships one namespace, `advsweep`, that imports without the source tree."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_has_only_the_advsweep_namespace_and_imports(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp_path)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(tmp_path.glob("advsweep-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"advsweep", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for sub in ("models/resnet.py", "analysis/frontier.py", "cluster/README.md", "storage/schema.py"):
        assert f"advsweep/{sub}" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import advsweep, advsweep.cli, advsweep.analysis.frontier, advsweep.cluster, advsweep.models as m;"
            "print(advsweep.__file__); print(len(m.MODELS.names()))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith(str(site)) and int(r.stdout.splitlines()[1]) >= 2
