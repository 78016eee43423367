"""Lab images are tagged by a hash of their recipe (and their parent's), so only changes rebuild."""
import shutil

import docker.errors
import pytest

from tasks.lab import images

CHILDREN_OF_PYTHON = {"s3", "backend", "mlflow2", "mlflow3", "pipbase", "mlflowprod"}  # and below


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    """A private copy of the recipes, used in place of the package's own."""
    copy = tmp_path / "recipes"
    shutil.copytree(images.RECIPES, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(images, "RECIPES", copy)
    return copy


def changed(before, after):
    return {name for name in before if before[name] != after[name]}


def test_hashes_are_stable_and_distinct():
    first = images.recipe_hashes()
    assert first == images.recipe_hashes()
    assert list(first) == list(images.PARENTS)
    assert all(len(h) == 12 and int(h, 16) >= 0 for h in first.values())
    assert len(set(first.values())) == len(first)


def test_a_copy_of_the_recipes_hashes_the_same(recipes, monkeypatch):
    # The hash depends on the recipe files' relative paths and contents, not where they live.
    from_copy = images.recipe_hashes()
    monkeypatch.setattr(images, "RECIPES", images.Path(images.__file__).parent / "recipes")
    assert images.recipe_hashes() == from_copy


def test_changing_the_python_recipe_rebuilds_it_and_its_children_only(recipes):
    before = images.recipe_hashes()
    dockerfile = recipes / "python" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "# one more line\n")
    after = images.recipe_hashes()
    assert changed(before, after) == {"python"} | CHILDREN_OF_PYTHON
    for sibling in ("base", "postgres", "redis"):
        assert after[sibling] == before[sibling]
    assert images.recipe_hashes() == after  # stable again


def test_changing_a_nested_file_of_a_leaf_rebuilds_that_image_only(recipes):
    before = images.recipe_hashes()
    main = recipes / "backend" / "app" / "main.py"
    main.write_text(main.read_text().replace("quant backend (lab)", "quant backend (lab, edited)"))
    assert changed(before, images.recipe_hashes()) == {"backend"}


def test_adding_or_renaming_a_file_changes_the_hash(recipes):
    before = images.recipe_hashes()
    (recipes / "postgres" / "extra.conf").write_text("shared_buffers = 128MB\n")
    added = images.recipe_hashes()
    assert changed(before, added) == {"postgres"}
    (recipes / "postgres" / "extra.conf").rename(recipes / "postgres" / "other.conf")
    renamed = images.recipe_hashes()
    assert changed(added, renamed) == {"postgres"}


def test_python_bytecode_caches_do_not_change_the_hash(recipes):
    before = images.recipe_hashes()
    cache = recipes / "backend" / "app" / "__pycache__"
    cache.mkdir()
    (cache / "main.cpython-311.pyc").write_bytes(b"\x00bytecode")
    assert images.recipe_hashes() == before


def test_image_refs_carry_the_hash(recipes):
    hashes = images.recipe_hashes()
    assert images.image_refs() == {n: f"quantlab/{n}:{h}" for n, h in hashes.items()}


class FakeImages:
    def __init__(self, present):
        self.present = set(present)

    def get(self, ref):
        if ref not in self.present:
            raise docker.errors.ImageNotFound(ref)
        return ref


class FakeClient:
    def __init__(self, present):
        self.images = FakeImages(present)


@pytest.fixture
def builds(monkeypatch):
    done = []
    monkeypatch.setattr(images, "_build_base", lambda client, ref, log, build_log: done.append(ref))
    monkeypatch.setattr(images, "_build_dockerfile",
                        lambda client, name, ref, parent_ref, log, build_log: done.append((ref, parent_ref)))
    return done


def test_all_cached_builds_nothing(builds, tmp_path):
    refs = images.image_refs()
    client = FakeClient(refs.values())
    lines = []
    assert images.missing_images(client) == []
    result = images.ensure_images(client, ["mlflow2"], log=lines.append, build_log=tmp_path / "b.log")
    assert builds == []
    assert result == {n: refs[n] for n in ("base", "python", "mlflow2")}
    assert [line for line in lines if "images cached" in line]
    assert not [line for line in lines if "building" in line]


def test_a_changed_recipe_rebuilds_the_image_and_children_it_is_asked_for(recipes, builds, tmp_path):
    old = images.image_refs()
    dockerfile = recipes / "python" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "# changed\n")
    new = images.image_refs()
    client = FakeClient(old.values())  # what an engine built before the change holds
    assert set(images.missing_images(client)) == {"python"} | CHILDREN_OF_PYTHON
    lines = []
    images.ensure_images(client, ["backend", "postgres"], log=lines.append, build_log=tmp_path / "b.log")
    # parent first, built FROM the base that is still cached; siblings and unrequested children untouched
    assert builds == [(new["python"], old["base"]), (new["backend"], new["python"])]
    assert not [line for line in lines if "images cached" in line]
