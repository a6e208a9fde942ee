"""Verifier for cuda: an existing toolkit and cuda_toolkit_install: false leave the host untouched."""

testinfra_hosts = ["ansible://all"]


def test_nothing_installed_or_configured(host):
    out = host.check_output("dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n'")
    installed = [line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["ii"]]
    assert [p for p in installed if p.startswith("cuda") or "nvidia" in p] == []
    for path in ("/etc/profile.d/cuda.sh", "/etc/ld.so.conf.d/cuda.conf",
                 "/etc/apt/sources.list.d/sdcloud-nvidia-cuda.sources", "/usr/share/keyrings/sdcloud-nvidia-cuda.asc"):
        assert not host.file(path).exists, path


def test_existing_toolkit_kept(host):
    if host.backend.get_hostname() != "sdc-cu-present":
        return
    assert "release 12.8" in host.check_output("/usr/local/cuda-12.8/bin/nvcc --version")
