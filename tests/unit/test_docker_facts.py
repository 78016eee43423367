"""tasks.facts.docker.ContainerInspect: the command it sends and how it reads `docker inspect` output
(the real engine's answers are exercised by tests/integration/test_fix_mlflow.py)."""
import json

from tasks.facts.docker import PREVIOUS_SUFFIX, SECTION, ContainerInspect


def _container(name: str) -> dict:
    return {"Id": f"id-{name}", "Name": f"/{name}", "State": {"Running": True}}


def _output(container: str, containers: list[dict], images: list[dict]) -> list[str]:
    """What the fact's command prints: docker's indented JSON lists under our section lines."""
    return ([f"{SECTION}containers {container}"] + json.dumps(containers, indent=4).splitlines()
            + [f"{SECTION}image"] + json.dumps(images, indent=4).splitlines())


def test_command_is_two_docker_calls_in_one_remote_command():
    command = ContainerInspect().command("quant-mlflow", "quantlab/mlflow2:abc")
    assert command.count("docker ") == 2
    assert "docker container inspect quant-mlflow quant-mlflow-previous" in command
    assert "docker image inspect quantlab/mlflow2:abc" in command
    assert command.rstrip().endswith("true")  # a missing object is an answer, not a failure


def test_command_quotes_what_it_is_given():
    command = ContainerInspect().command("a b", "img;rm -rf /")
    assert "'a b' 'a b-previous'" in command
    assert "'img;rm -rf /'" in command


def test_reads_container_previous_and_image():
    image = {"Id": "sha256:1", "RepoTags": ["quantlab/mlflow2:abc"]}
    facts = ContainerInspect().process(_output(
        "quant-mlflow", [_container("quant-mlflow"), _container("quant-mlflow" + PREVIOUS_SUFFIX)], [image]))
    assert facts["container"]["Id"] == "id-quant-mlflow"
    assert facts["previous"]["Id"] == "id-quant-mlflow-previous"
    assert facts["image"] == image


def test_only_the_previous_copy_left():
    facts = ContainerInspect().process(_output("m", [_container("m-previous")], []))
    assert facts == {"container": None, "previous": _container("m-previous"), "image": None}


def test_nothing_there():
    assert ContainerInspect().process(_output("m", [], [])) == {"container": None, "previous": None,
                                                                "image": None}


def test_a_name_that_itself_ends_in_previous():
    facts = ContainerInspect().process(_output(
        "x-previous", [_container("x-previous"), _container("x-previous-previous")], []))
    assert facts["container"]["Name"] == "/x-previous"
    assert facts["previous"]["Name"] == "/x-previous-previous"


def test_no_output_at_all_reads_as_nothing():
    # e.g. the engine refused: stdout is empty, the errors went to stderr
    assert ContainerInspect().process([]) == {"container": None, "previous": None, "image": None}
