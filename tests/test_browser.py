"""The chapters' widgets in a real browser: JupyterLab on the course, headless Chromium driven by selenium.

For chapter 6's explorer and chapter 3's slider: the notebook runs in JupyterLab (Run > Run All
Cells), the widgets must render (no "Error displaying widget", no plain-text repr such as
"VBox(children=..."), and changing a control must change the picture it draws.

Chapter 3 runs whole. Chapter 6 runs whole in minutes, so the test opens a notebook made of the
chapter's own cells that the explorer needs: the set-up and import cells, the cell that loads the
affine model, and every cell of the explorer's section (up to "## Exercises").

Needs Chromium, chromedriver and selenium (`tools/browser_deps.sh` installs them where it can);
skipped, with the reason, where one is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    selenium = None

pytestmark = [
    pytest.mark.skipif(
        selenium is None, reason="selenium is not installed (pip install selenium; tools/browser_deps.sh)"
    ),
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium/Chrome binary on PATH (apt-get install chromium)"),
    pytest.mark.skipif(DRIVER is None, reason="no chromedriver on PATH (apt-get install chromium-driver)"),
]

RUN_TIMEOUT = 900  # seconds for Run All Cells (chapter 3 in quick mode on a busy 2-core machine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def explorer_notebook(folder: Path) -> Path:
    """Chapter 6's cells that its explorer needs (see the module docstring), as a notebook in `folder`."""
    nb = nbformat.read(ROOT / "chapters" / "06_mahalanobis.ipynb", as_version=4)
    cells, in_section = [], False
    code_seen = 0
    for cell in nb.cells:
        src = cell.source
        if cell.cell_type == "markdown" and "## 7. An explorer" in src:
            in_section = True
        elif cell.cell_type == "markdown" and src.lstrip("# ").startswith("Exercises"):
            in_section = False
        if cell.cell_type == "code":
            code_seen += 1
        keep = in_section or (
            cell.cell_type == "code" and (code_seen <= 2 or 'sr_affine = load_pretrained("sr_affine"' in src)
        )
        if keep:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
            cells.append(cell)
    assert any("explore(" in c.source for c in cells), "chapter 6 has no explorer cell"
    nb.cells = cells
    path = folder / "explorer.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a folder of test notebooks; yields (url, token, folder)."""
    folder = tmp_path_factory.mktemp("lab")
    shutil.copy(ROOT / "chapters" / "03_exploding_inverse.ipynb", folder)
    explorer_notebook(folder)
    port, token = free_port(), "minflow-browser-test"
    env = {**os.environ, "MINFLOW_QUICK": "1", "PYTHONPATH": str(ROOT), "JUPYTER_PLATFORM_DIRS": "1"}
    env.pop("MPLBACKEND", None)  # the chapters' figures must show inline
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.token={token}", f"--notebook-dir={folder}", "--allow-root",
           "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=True"]  # fmt: skip
    log = open(folder / "lab.log", "w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.terminate()
        pytest.fail(f"JupyterLab did not start: {(folder / 'lab.log').read_text()[-2000:]}")
    yield url, token, folder
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,2400"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def run_all(driver, url: str, token: str, name: str) -> None:
    """Open notebook `name` in JupyterLab and run every cell through the Run menu; wait for the end."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/lab/tree/{name}?token={token}")
    wait = WebDriverWait(driver, 120)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")))
    time.sleep(5)  # let the kernel start; Run All queues behind it anyway
    menu = wait.until(
        ec.element_to_be_clickable((By.XPATH, "//li[contains(@class,'lm-MenuBar-item')][.//div[text()='Run']]"))
    )
    menu.click()
    item = wait.until(
        ec.element_to_be_clickable((By.XPATH, "//li[contains(@class,'lm-Menu-item')][.//div[text()='Run All Cells']]"))
    )
    item.click()
    time.sleep(3)

    def finished(d):
        prompts = [p.text for p in d.find_elements(By.CSS_SELECTOR, ".jp-InputPrompt")]
        return prompts and not any("*" in p for p in prompts) and all("[ ]" not in p for p in prompts if p.strip())

    WebDriverWait(driver, RUN_TIMEOUT, poll_frequency=2).until(finished)


def output_text(driver) -> str:
    """The text of every cell's output area (not the cells' source, which names the widgets it builds)."""
    from selenium.webdriver.common.by import By

    return "\n".join(o.text for o in driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-OutputArea"))


def assert_rendered(driver) -> None:
    text = output_text(driver)
    assert text.strip(), "the notebook shows no output at all"
    assert "Error displaying widget" not in text
    for repr_start in ("VBox(children=", "HBox(children=", "IntSlider(value=", "FloatSlider(value=", "Dropdown("):
        assert repr_start not in text, f"a widget shows as text: {repr_start}"
    assert "Traceback" not in text, text[-3000:]


def set_slider(driver, description: str, value: str) -> None:
    """Type `value` into the readout of the slider labelled `description` (as a user may)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for slider in driver.find_elements(By.CSS_SELECTOR, ".widget-slider"):
        label = slider.find_elements(By.CSS_SELECTOR, ".widget-label")
        if label and label[0].text.strip() == description:
            readout = slider.find_element(By.CSS_SELECTOR, ".widget-readout")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", readout)
            readout.click()
            readout.send_keys(Keys.CONTROL, "a")
            readout.send_keys(value, Keys.ENTER)
            return
    raise AssertionError(f"no slider labelled {description!r}")


def images_src(driver, css: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [img.get_attribute("src") for img in driver.find_elements(By.CSS_SELECTOR, css)]


def wait_changed(driver, css: str, before: list[str], timeout: float = 120) -> list[str]:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=1).until(
        lambda d: images_src(d, css) and images_src(d, css) != before
    )
    return images_src(driver, css)


def test_chapter6_explorer_renders_and_redraws(lab, browser):
    url, token, _ = lab
    run_all(browser, url, token, "explorer.ipynb")
    assert_rendered(browser)
    css = ".jp-OutputArea-output img.widget-image"
    before = images_src(browser, css)
    assert len(before) == 2, f"expected the explorer's two pictures, found {len(before)}"
    set_slider(browser, "T", "0.4")
    after = wait_changed(browser, css, before)
    assert after[0] != before[0]
    assert_rendered(browser)


def test_chapter3_slider_renders_and_redraws(lab, browser):
    url, token, _ = lab
    run_all(browser, url, token, "03_exploding_inverse.ipynb")
    assert_rendered(browser)
    css = ".jp-OutputArea-output .widget-output img"
    before = images_src(browser, css)
    assert before, "chapter 3's slider drew no figure"
    set_slider(browser, "log10 |y|", "0.5")
    wait_changed(browser, css, before)
    assert_rendered(browser)
