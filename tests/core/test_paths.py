"""Stored paths (core/paths.py): a job's file is opened only inside DATA_DIR's uploads/ or results/."""
import pytest

from core.paths import StoredPathError, kept_file, stored_file


@pytest.fixture
def data_dir(tmp_path):
    data = tmp_path / "data"
    for folder in ("uploads", "results", "instance"):
        (data / folder).mkdir(parents=True)
    (tmp_path / "outside.txt").write_text("not the service's")
    (data / "results" / "link.xml").symlink_to(tmp_path / "outside.txt")
    (data / "uploads" / "dir-link").symlink_to(tmp_path)
    return data


@pytest.mark.parametrize("relative", ["uploads/j1.pdf", "results/j1.xml", "uploads/not-there-yet.pdf"])
def test_a_stored_path_in_uploads_or_results_is_the_file_there(data_dir, relative):
    assert stored_file(data_dir, relative) == (data_dir / relative).resolve()
    assert stored_file(str(data_dir), relative) == kept_file(str(data_dir), relative)


def test_uploads_may_be_a_symlink_to_another_disk(tmp_path):
    data, disk = tmp_path / "data", tmp_path / "big-disk"
    (disk / "uploads").mkdir(parents=True)
    data.mkdir()
    (data / "uploads").symlink_to(disk / "uploads")
    assert stored_file(data, "uploads/j1.pdf") == disk.resolve() / "uploads" / "j1.pdf"


@pytest.mark.parametrize("relative", [
    "../outside.txt", "results/../../outside.txt", "uploads/../instance/pdfqueue.db", "instance/secret_key",
    "results/link.xml",  # a symlink inside results/ pointing out
    "uploads/dir-link/outside.txt",  # through a symlinked directory
    "uploads", "results/", "pdfqueue.db", "uploads/a\0b.pdf",
])
def test_a_stored_path_that_leads_elsewhere_is_refused(data_dir, relative):
    with pytest.raises(StoredPathError):
        stored_file(data_dir, relative)
    assert kept_file(data_dir, relative) is None


def test_an_absolute_stored_path_is_refused(data_dir, tmp_path):
    with pytest.raises(StoredPathError):
        stored_file(data_dir, str(tmp_path / "outside.txt"))
    with pytest.raises(StoredPathError):
        stored_file(data_dir, "/etc/passwd")


def test_no_stored_path_is_no_file(data_dir):
    assert kept_file(data_dir, None) is None and kept_file(data_dir, "") is None
