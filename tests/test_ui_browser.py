"""What a researcher sees in the MLflow UI, checked in a real browser (issue 17).

The smoke spec fills a fresh store (two variants x two seeds, debug backend), a notebook's outputs
are logged as the notebooks do, `mlflow ui` serves the store on a loopback port, and headless
Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium) opens the link the CLI printed.
Screenshots land in this session's `ui_screenshots` tmp folder (docs/img/ holds two of them).

Without Chromium the tests are skipped with the reason, unless ONER_REQUIRE_BROWSER=1 (set by
.ci/run, which installs it): then a missing browser is a failure.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow_store import copy_store, subprocess_env

from oner_lab import analysis

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "experiments" / "smoke.yaml"
EXPERIMENT = "oner-smoke"
RUN_NAMES = [f"{variant}/seed{seed}" for variant in ("itc", "oner") for seed in (0, 1)]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
)
SERVER_START_S = 180
PAGE_WAIT_S = 60

pytestmark = pytest.mark.slow


def _browser_missing() -> str | None:
    """Why no browser can be driven here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found (apt-get install -y {package})"
    return None


@pytest.fixture(scope="module")
def browser_ready() -> None:
    reason = _browser_missing()
    if reason is not None:
        message = f"no headless Chromium: {reason}"
        if os.environ.get("ONER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message} (ONER_REQUIRE_BROWSER=1)", pytrace=False)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui_screenshots")


@pytest.fixture(scope="module")
def filled(browser_ready: None, tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> dict[str, str]:
    """The smoke spec's runs in a fresh store, a notebook's outputs logged, and the UI link the CLI printed."""
    directory = tmp_path_factory.mktemp("ui_store")
    uri = copy_store(mlflow_template, directory)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "oner_lab.run",
        str(SMOKE),
        "--set",
        "launcher.backend=debug",
        "--set",
        "grid.seed=[0,1]",
        "--set",
        "tracking.system_metrics_interval_s=1",
    ]
    env = {**subprocess_env(), "ONER_MLFLOW_UI": base, "COLUMNS": "250"}
    done = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = re.search(r"MLflow UI.*?: (http://\S+/#/\S+)", done.stdout)
    assert found, f"run printed no UI link:\n{done.stdout[-2000:]}"
    figure = directory / "figure.txt"
    figure.write_text("a notebook output\n")
    assert analysis.log_outputs(uri, EXPERIMENT, "ablation", [figure]) is not None  # what every notebook does
    return {"uri": uri, "base": base, "port": str(port), "link": found.group(1), "directory": str(directory)}


@pytest.fixture(scope="module")
def server(filled: dict[str, str]) -> Iterator[str]:
    """`mlflow ui` over the filled store on a loopback port (one worker, no job runner)."""
    log = Path(filled["directory"]) / "mlflow_ui.log"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        filled["uri"],
        "--host",
        "127.0.0.1",
        "--port",
        filled["port"],
        "--workers",
        "1",
    ]
    env = {**subprocess_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{filled['base']}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow ui did not answer on {filled['base']}:\n{log.read_text()[-3000:]}", pytrace=False)
            time.sleep(1)
        yield filled["base"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def browser(server: str, tmp_path: Path) -> Iterator[object]:
    """Headless Chromium with a fresh profile (so the UI starts in its default GenAI mode)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_text(driver: object, *texts: str, timeout: float = PAGE_WAIT_S) -> str:
    """The page's visible text once it holds every one of `texts` (fails with the text it had)."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while True:
        body = driver.find_element(By.TAG_NAME, "body").text
        if all(text in body for text in texts):
            return body
        if time.monotonic() > deadline:
            missing = [text for text in texts if text not in body]
            pytest.fail(
                f"{driver.current_url}: the page never showed {missing}; it showed:\n{body[:3000]}", pytrace=False
            )
        time.sleep(0.5)


def click(driver: object, xpath: str, timeout: float = PAGE_WAIT_S) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(expected_conditions.element_to_be_clickable((By.XPATH, xpath))).click()


def press_escape(driver: object) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(driver).send_keys(Keys.ESCAPE).perform()
    time.sleep(0.5)


def close_assistant(driver: object) -> None:
    """Closes MLflow's assistant side panel when it is open (it hides half of the runs list)."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.XPATH, "//button[@aria-label='Close']"):
        if button.is_displayed():
            button.click()
            time.sleep(0.5)


def test_the_printed_link_opens_the_training_runs_list_without_analysis_runs(browser, filled, screenshots) -> None:
    browser.get(filled["link"])
    body = wait_for_text(browser, *RUN_NAMES, "Model training")
    assert "/runs" in browser.current_url and "workflowType=machine_learning" in browser.current_url
    assert "Detect Issues" not in body and "analysis/" not in body  # not the GenAI overview; no notebook output run
    close_assistant(browser)
    browser.save_screenshot(str(screenshots / "runs_list.png"))
    click(browser, "//button[contains(., 'Group by')]")
    click(browser, "//*[@role='menu']//*[normalize-space(text())='oner.variant']")
    press_escape(browser)  # close the menu
    grouped = wait_for_text(browser, "oner.variant")
    assert all(name not in grouped for name in ("analysis/",))
    time.sleep(1)
    browser.save_screenshot(str(screenshots / "runs_grouped_by_variant.png"))
    client = MlflowClient(filled["uri"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    companion = client.get_experiment_by_name(f"{EXPERIMENT}/analysis")
    assert [run.info.run_name for run in client.search_runs([companion.experiment_id])] == ["analysis/ablation"]


def test_a_run_page_shows_user_source_datasets_and_system_metrics(browser, filled, screenshots) -> None:
    client = MlflowClient(filled["uri"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    [run] = client.search_runs([experiment.experiment_id], "attributes.run_name = 'oner/seed0'")
    link = f"{filled['base']}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    assert link in run.data.tags["mlflow.note.content"]  # the run's description links its own page
    browser.get(link)
    body = wait_for_text(browser, "Created by", "Source", "Datasets", "cost.train_flops_per_step")
    assert f"Created by\n{getpass.getuser()}" in body
    assert "Source\nsmoke.yaml" in body
    assert "shapes/train" in body and "Training" in body
    close_assistant(browser)
    browser.save_screenshot(str(screenshots / "run_page.png"))
    click(browser, "//*[normalize-space(text())='+2']")  # the eval sets behind the first dataset
    wait_for_text(browser, "shapes_cls", "Eval")
    press_escape(browser)
    click(browser, "//*[@role='tab' and contains(., 'System metrics')]")
    wait_for_text(browser, "cpu_utilization_percentage", "network_receive_megabytes")
    time.sleep(1)
    browser.save_screenshot(str(screenshots / "run_system_metrics.png"))
    weights = [item.path for item in client.list_artifacts(run.info.run_id, "weights")]
    assert weights == ["weights/model.safetensors"]
    print(f"screenshots: {screenshots}")
    if os.environ.get("ONER_KEEP_SCREENSHOTS"):
        for name in os.listdir(screenshots):
            shutil.copy(screenshots / name, Path(os.environ["ONER_KEEP_SCREENSHOTS"]) / name)
