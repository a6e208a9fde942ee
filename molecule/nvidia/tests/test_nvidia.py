"""Verifier for nvidia_driver: a working (stand-in) driver and a CPU-only host are left alone."""

testinfra_hosts = ["ansible://all"]


def test_no_nvidia_package_installed(host):
    out = host.check_output("dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n'")
    installed = [line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["ii"]]
    nvidia = [p for p in installed if "nvidia" in p or p.startswith("cuda")]
    assert nvidia == []


def test_nothing_configured(host):
    assert not host.file("/etc/modprobe.d/sdcloud-blacklist-nouveau.conf").exists
    assert not host.file("/etc/systemd/system/nvidia-persistenced.service.d/sdcloud.conf").exists
    assert not host.file("/etc/apt/sources.list.d/sdcloud-nvidia-cuda.sources").exists
    assert host.run("ls /etc/apt/sources.list.d/sdcloud-debian-*").rc != 0


def test_no_reboot(host):
    before = host.file("/var/tmp/sdcloud-test-boot-id").content_string.strip()
    assert before
    assert host.file("/proc/sys/kernel/random/boot_id").content_string.strip() == before

