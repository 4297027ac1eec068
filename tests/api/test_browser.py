"""The web page in a real headless browser (Debian chromium + chromedriver, driven by Selenium)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from api.app import create_app
from indexer.settings import Settings
from tests.api.live import live_server
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
ARTIFACTS = ROOT / ".pytest_artifacts"


def find_browser() -> tuple[str, str] | None:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser_paths():
    """Debian's chromium and chromedriver; installed here when the suite runs as root (CI), else skipped."""
    found = find_browser()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], env=env, check=False, capture_output=True)
        found = find_browser()
    if found is None:
        pytest.skip("needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    return found


@pytest.fixture(scope="module")
def server_url(sample_index, searcher):
    with live_server(create_app(Settings.load(env={}, index_dir=sample_index), searcher=searcher)) as url:
        yield url


@pytest.fixture(scope="module")
def driver(browser_paths, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser_paths[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):  # fmt: skip
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(browser_paths[1]), options=options)
    yield browser
    browser.quit()


def test_upload_see_results_and_click_to_search_again(driver, server_url, sample_photos):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 60)
    driver.get(server_url + "/")
    wait.until(ec.text_to_be_present_in_element((By.ID, "stats"), f"{len(sample_photos)} photos indexed"))
    query = sample_photos[40]
    driver.find_element(By.ID, "k").clear()
    driver.find_element(By.ID, "k").send_keys("12")
    driver.find_element(By.ID, "file").send_keys(str(query))
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "12 results for"))
    hits = driver.find_elements(By.CSS_SELECTOR, ".hit")
    assert len(hits) == 12
    assert hits[0].get_attribute("title") == str(query)
    distance, match = hits[0].find_element(By.CSS_SELECTOR, ".dist").text.split(" · match ")  # re-ranked: the match shows
    assert distance == "0.000" and float(match) >= 0.9
    assert hits[0].find_element(By.CSS_SELECTOR, ".name").text == query.name  # on its own line, whole
    wait.until(lambda d: d.execute_script("return [...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)"))
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "web-search.png"))
    assert (ARTIFACTS / "web-search.png").stat().st_size > 10_000
    second = hits[1]
    second_path = second.get_attribute("title")
    second.click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), f"like {Path(second_path).name}"))
    assert driver.find_elements(By.CSS_SELECTOR, ".hit")[0].get_attribute("title") == second_path


def test_a_bad_upload_shows_the_error_message(driver, server_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / "fake.jpg"
    bad.write_text("this is not a photo")
    driver.get(server_url + "/")
    driver.find_element(By.ID, "file").send_keys(str(bad))
    WebDriverWait(driver, 30).until(ec.text_to_be_present_in_element((By.ID, "status"), "Error 400"))
    assert "not an image" in driver.find_element(By.ID, "status").text


def test_a_pasted_image_is_searched_and_each_result_links_to_its_photo(driver, server_url, sample_photos, searcher):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 60)
    driver.get(server_url + "/")
    wait.until(ec.text_to_be_present_in_element((By.ID, "stats"), "photos indexed"))
    query = sample_photos[7]
    photo_id = next(i for i, p in searcher.photos([int(i) for i in searcher.fresh_vectors().ids()]).items() if p.path == str(query))
    # What the clipboard holds after copying an image: a file named image.png, no path.
    driver.execute_async_script(
        """const [id, done] = arguments;
        fetch(`/images/${id}`).then(r => r.blob()).then(blob => {
          const clipboard = new DataTransfer();
          clipboard.items.add(new File([blob], "image.png", { type: blob.type }));
          document.body.dispatchEvent(new ClipboardEvent("paste", { clipboardData: clipboard, bubbles: true }));
          done();
        });""",
        photo_id,
    )
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "results for pasted image"))
    first = driver.find_elements(By.CSS_SELECTOR, ".hit")[0]
    assert first.get_attribute("title") == str(query)
    link = first.find_element(By.CSS_SELECTOR, ".open")
    assert link.get_attribute("href") == f"{server_url}/images/{photo_id}" and link.get_attribute("target") == "_blank"

    # Pasting text (an image's address, say) says what to do instead, and keeps the results.
    driver.execute_script(
        """const clipboard = new DataTransfer();
        clipboard.setData("text/plain", "https://example.com/photo.jpg");
        document.body.dispatchEvent(new ClipboardEvent("paste", { clipboardData: clipboard, bubbles: true }));"""
    )
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "copy an image"))
    assert driver.find_elements(By.CSS_SELECTOR, ".hit")[0].get_attribute("title") == str(query)


def test_a_heic_upload_is_searched_and_shown_as_the_server_draws_it(driver, server_url, sample_photos, tmp_path):
    import pillow_heif
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    pillow_heif.register_heif_opener()
    query = sample_photos[20]
    heic = tmp_path / "iphone.heic"
    Image.open(query).save(heic)
    driver.get(server_url + "/")
    driver.find_element(By.ID, "file").send_keys(str(heic))
    wait = WebDriverWait(driver, 60)
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "results for iphone.heic"))
    assert driver.find_elements(By.CSS_SELECTOR, ".hit")[0].get_attribute("title") == str(query)
    # The browser cannot show HEIC: the page asks the server to draw it (POST /images/preview).
    shown = "const i = document.querySelector('#query img'); return i && i.src.startsWith('blob:') && i.complete ? i.naturalWidth : 0"
    wait.until(lambda d: d.execute_script(shown) > 0)
    drawn = Image.open(query)
    drawn.thumbnail((256, 256))
    assert driver.execute_script(shown) == drawn.width and len(driver.find_elements(By.CSS_SELECTOR, "#query img")) == 1
    # A result in such a format opens as the server's 1024 px JPEG of it; any other as itself.
    opens = "return card({id: 7, path: arguments[0], distance: 0}, '', '').querySelector('.open').href"
    assert driver.execute_script(opens, "/photos/IMG_0001.HEIC").endswith("/images/7/thumbnail?size=1024")
    assert driver.execute_script(opens, "/photos/scan.tif").endswith("/images/7/thumbnail?size=1024")
    assert driver.execute_script(opens, "/photos/IMG_0002.jpg").endswith("/images/7")


def test_a_folder_narrows_the_search_and_changing_it_searches_again(driver, server_url, sample_photos):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.conftest import SAMPLES

    wait = WebDriverWait(driver, 60)
    driver.get(server_url + "/")
    wait.until(ec.text_to_be_present_in_element((By.ID, "stats"), "photos indexed"))
    roots = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#roots option")]
    assert roots == [str(SAMPLES)]  # offered as the folder box's suggestions
    query = next(p for p in sample_photos if not p.name.startswith("Leopards"))
    leopards = str(SAMPLES / "Leopards")  # a path prefix: the samples named Leopards_*
    folder = driver.find_element(By.ID, "folder")
    folder.send_keys(leopards)
    driver.find_element(By.ID, "file").send_keys(str(query))
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), f"results for {query.name} in {leopards}"))
    titles = [h.get_attribute("title") for h in driver.find_elements(By.CSS_SELECTOR, ".hit")]
    assert titles and all(t.startswith(leopards) for t in titles)
    folder.send_keys(Keys.CONTROL, "a")
    # Every folder again (the box was never left, so only Enter says so): the same photo searches again.
    folder.send_keys(Keys.BACKSPACE, Keys.ENTER)
    # (The results may be replaced between finding the first and reading its title: look again then.)
    WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".hit")[0].get_attribute("title") == str(query)
    )
    assert "in /" not in driver.find_element(By.ID, "status").text


def test_duplicates_are_shown_in_groups_with_the_copy_to_keep_first(driver, duplicates_folder, default_model):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from indexer.embedding.config import RuntimeOptions
    from searcher.searcher import Searcher
    from tests.conftest import DUPLICATE_COPIES

    photos, index_dir = duplicates_folder
    with Searcher(index_dir, RuntimeOptions(device="cpu", workers=0), model=default_model) as searcher:
        with live_server(create_app(Settings.load(env={}, index_dir=index_dir), searcher=searcher)) as url:
            wait = WebDriverWait(driver, 120)
            driver.get(url + "/")
            wait.until(ec.text_to_be_present_in_element((By.ID, "stats"), "photos indexed"))
            driver.find_element(By.ID, "dups").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "2 groups of near-duplicates"))
            groups = driver.find_elements(By.CSS_SELECTOR, ".group")
            found = {}
            for group in groups:
                assert group.find_element(By.CSS_SELECTOR, ".title").text == "2 photos"
                keep, copy = group.find_elements(By.CSS_SELECTOR, ".hit")
                assert "keep" in keep.get_attribute("class") and keep.find_element(By.CSS_SELECTOR, ".dist").text.startswith("keep · ")
                distance, size = copy.find_element(By.CSS_SELECTOR, ".dist").text.split(" · ")
                assert float(distance) > 0 and size.count("x") == 1
                found[Path(copy.get_attribute("title")).name] = Path(keep.get_attribute("title")).name
            assert found == {copy: original for copy, (original, _, _) in DUPLICATE_COPIES.items()}
            wait.until(lambda d: d.execute_script("return [...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)"))
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "web-duplicates.png"))

            # A folder given: duplicates among its photos only; a click on a photo searches like it.
            driver.find_element(By.ID, "folder").send_keys(str(photos / "airplane"))
            driver.find_element(By.ID, "dups").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "status"), f"1 group of near-duplicates in {photos / 'airplane'}"))
            copy = driver.find_elements(By.CSS_SELECTOR, ".group .hit")[1]
            copy.click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "like airplane_tilted.png"))
