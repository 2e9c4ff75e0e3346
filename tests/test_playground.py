"""The playground page at `/` in a real headless Chromium (Debian's, `make tools`, driven by Playwright) against a
real gateway with an API key: a Fashion-MNIST PNG -> tokens and reconstruction with PSNR, token edits, a generated
grid, and the page's message for each error. TITOK_UPDATE_SCREENSHOT=1 refreshes docs/playground.png."""

import base64
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, Gateway

pytestmark = pytest.mark.slow  # a gateway and headless Chromium

CHROMIUM = Path("/usr/bin/chromium")
KEY = "page-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(model_repository, tmp_path_factory):
    g = Gateway(model_repository, tmp_path_factory.mktemp("gw") / "playground.log", api_keys=KEY)
    yield g
    g.stop()


@pytest.fixture(scope="module")
def sneaker(tmp_path_factory) -> Path:
    """The first sneaker of Fashion-MNIST's test split, as the 32x32 PNG the model was trained on."""
    from training.data import load_fashion_mnist

    x, y = load_fashion_mnist("test", limit=100)
    path = tmp_path_factory.mktemp("images") / "sneaker.png"
    Image.fromarray(x[int((y == 7).nonzero()[0, 0])].permute(1, 2, 0).numpy()).save(path)
    return path


def route_counts(url: str) -> dict[str, float]:
    counts = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.name == "titok_requests_total":
                counts[s.labels["route"]] = counts.get(s.labels["route"], 0) + s.value
    return counts


def test_page_needs_no_key_and_has_its_own_metric_routes(server):
    before = route_counts(server.url)
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name in re.findall(r'"/static/([\w.]+)"', page.text):
        assert httpx.get(f"{server.url}/static/{name}").status_code == 200
    missing = httpx.get(f"{server.url}/static/nope.js")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert httpx.get(f"{server.url}/v1/models").status_code == 401  # the API itself still needs the key
    assert httpx.get(f"{server.url}/docs").status_code == 200
    assert "/" not in httpx.get(f"{server.url}/openapi.json").json()["paths"]
    after = route_counts(server.url)
    assert after["/"] - before.get("/", 0) == 1
    assert after["/static/{name}"] - before.get("/static/{name}", 0) == 3  # style.css, app.js and nope.js
    assert after["/docs"] - before.get("/docs", 0) == 1  # the offline docs page is a route of its own
    assert after.get("other", 0) - before.get("other", 0) == 1  # /openapi.json: FastAPI's own route


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is missing: `make tools` (apt-get install chromium)")
def test_playground_in_chromium(server, sneaker, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    tokens = httpx.post(
        f"{server.url}/v1/tokenize", json={"images": [base64.b64encode(sneaker.read_bytes()).decode()]}, headers=AUTH
    ).json()["tokens"][0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(sneaker.read_bytes()[:70])  # a real PNG cut short

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1100, "height": 640})
        problems = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.set_default_timeout(30_000)
        error = page.locator("#error")

        # no key yet: the models call answers 401 and the page says what to do
        page.goto(server.url)
        expect(error).to_contain_text("401 unauthorized")
        expect(error).to_contain_text("Enter a valid API key")
        page.fill("#api-key", KEY)
        page.press("#api-key", "Enter")
        expect(page.locator("#class option")).to_have_count(10)
        expect(error).to_be_hidden()
        page.reload()  # the key is kept in localStorage
        expect(page.locator("#api-key")).to_have_value(KEY)
        expect(page.locator("#class option")).to_have_count(10)
        expect(error).to_be_hidden()

        # a real image: its 32 tokens (the API's), colour chips, the reconstruction and an exact PSNR
        page.set_input_files("#file", str(sneaker))
        expect(page.locator("#psnr")).to_contain_text("dB")
        ids = page.locator("#tokens input")
        assert [int(v) for v in ids.evaluate_all("inputs => inputs.map(i => i.value)")] == tokens
        chips = page.locator("#tokens .chip").evaluate_all("cs => cs.map(c => getComputedStyle(c).backgroundColor)")
        assert len(set(chips)) >= 16 and page.evaluate("tokenColour(7) === tokenColour(7)")
        assert page.locator("#reconstruction").evaluate("img => img.naturalWidth") == 32
        assert float(page.locator("#psnr").text_content().split()[0]) > 15
        expect(page.locator("#psnr-note")).to_contain_text("Exact")
        psnr = page.locator("#psnr").text_content()

        # the same garment as the data set's own 28x28 file: laid out on black as in training (the family's
        # content_size), so the same tokens and the same exact PSNR
        native = tmp_path / "native.png"
        Image.open(sneaker).convert("L").crop((2, 2, 30, 30)).save(native)
        page.set_input_files("#file", str(native))
        expect(page.locator("#status")).to_contain_text("Tokenized native.png")
        expect(page.locator("#psnr-note")).to_contain_text("Exact: the input is already 28 px")
        assert [int(v) for v in ids.evaluate_all("inputs => inputs.map(i => i.value)")] == tokens
        expect(page.locator("#psnr")).to_have_text(psnr)

        # the guidance schedule starts at the model's default and goes into the request
        default = httpx.get(f"{server.url}/v1/models", headers=AUTH).json()["data"][0]["sampling"]
        expect(page.locator("#guidance-schedule")).to_have_value(default["guidance_schedule"])
        with page.expect_request("**/v1/generate") as sent:
            page.select_option("#guidance-schedule", "linear")
            page.click("#generate-button")
        assert sent.value.post_data_json["guidance_schedule"] == "linear"
        page.select_option("#guidance-schedule", default["guidance_schedule"])

        # a grid of generated images with their seeds
        page.select_option("#class", "7")
        page.fill("#n", "8")
        page.fill("#seed", "11")
        page.click("#generate-button")
        figures = page.locator("#grid figure")
        expect(figures).to_have_count(8)
        expect(figures.locator("figcaption")).to_have_text([f"Sneaker \u00b7 seed {s}" for s in range(11, 19)])
        assert figures.locator("img").evaluate_all("imgs => imgs.map(i => i.naturalWidth)") == [32] * 8
        page.screenshot(path=tmp_path / "playground.png")

        # edit a token and decode again: a new image
        first = page.locator("#reconstruction").get_attribute("src")
        ids.nth(0).fill(str((tokens[0] + 512) % 1024))
        page.click("#decode")
        expect(page.locator("#reconstruction")).not_to_have_attribute("src", first)
        expect(page.locator("#status")).to_contain_text("Decoded")

        # a generated image's tokens go into the editor and decode to the same image
        figures.nth(2).click()
        expect(page.locator("#psnr")).to_have_text("\u221e dB")

        # a larger image dropped on the page: resized in the browser, so the PSNR is approximate
        big = tmp_path / "big.png"
        Image.open(sneaker).resize((48, 64), Image.Resampling.BICUBIC).save(big)
        files = page.evaluate_handle(
            """b64 => {
                const files = new DataTransfer();
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                files.items.add(new File([bytes], "big.png", { type: "image/png" }));
                return files;
            }""",
            base64.b64encode(big.read_bytes()).decode(),
        )
        page.dispatch_event("#drop", "drop", {"dataTransfer": files})
        expect(page.locator("#psnr-note")).to_contain_text("Approximate: the browser resized the 48\u00d764 input")
        expect(page.locator("#status")).to_contain_text("Tokenized big.png")
        assert float(page.locator("#psnr").text_content().split()[0]) > 12

        # errors: the API's, shown as status, type and message; and the page's own
        ids.nth(3).fill("5000")
        page.click("#decode")
        expect(error).to_contain_text("400 invalid_request: token ids must lie in [0, 1024), not 5000 [tokens[0][3]]")
        ids.nth(3).fill("x")
        page.click("#decode")
        expect(error).to_contain_text('Token 3 must be a whole number, not "x".')
        page.fill("#n", "65")
        page.click("#generate-button")
        expect(error).to_contain_text("400 invalid_request: at most 64 images per request")
        page.fill("#n", "0")
        page.click("#generate-button")
        expect(error).to_contain_text("422 validation_error: n:")
        page.set_input_files("#file", str(broken))
        expect(error).to_contain_text("400 invalid_image: cannot decode the PNG image")
        page.fill("#api-key", "wrong")
        page.press("#api-key", "Enter")
        expect(error).to_contain_text("401 unauthorized")
        assert problems == []
        browser.close()

    shot = tmp_path / "playground.png"
    assert shot.stat().st_size < 200_000
    if os.environ.get("TITOK_UPDATE_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "playground.png")


def test_variations_in_the_playground(server, sneaker, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    tokens = httpx.post(
        f"{server.url}/v1/tokenize", json={"images": [base64.b64encode(sneaker.read_bytes()).decode()]}, headers=AUTH
    ).json()["tokens"][0]
    body = {"tokens": tokens, "mask": [0, 1, 5], "class_labels": 3, "n": 4, "seed": 5, "return_tokens": True}
    expected = httpx.post(f"{server.url}/v1/variations", json=body, headers=AUTH, timeout=60).json()["images"]

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        problems = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.set_default_timeout(30_000)
        page.goto(server.url)
        page.evaluate(f"localStorage.setItem('titok.apiKey', '{KEY}')")
        page.reload()
        expect(page.locator("#vary-class option")).to_have_count(11)  # unconditional + 10 classes
        page.set_input_files("#file", str(sneaker))
        expect(page.locator("#psnr")).to_contain_text("dB")

        # the strength slider says how many tokens it hides; clicked chips take over from it
        page.locator("#strength").evaluate("s => { s.value = 0.25; s.dispatchEvent(new Event('input')); }")
        expect(page.locator("#strength-out")).to_have_text("8 of 32 tokens")
        chips = page.locator("#tokens .chip")
        for i in (0, 1, 5, 7):
            chips.nth(i).click()
        chips.nth(7).click()  # a second click un-hides it
        expect(page.locator("#strength-out")).to_have_text("3 clicked token(s)")
        assert page.locator("#strength").is_disabled()
        page.select_option("#vary-class", "3")
        page.fill("#vary-n", "4")
        page.fill("#vary-seed", "5")
        page.click("#vary-button")
        figures = page.locator("#variations figure")
        expect(figures).to_have_count(4)
        expect(figures.locator("figcaption")).to_have_text([f"Dress \u00b7 seed {s} \u00b7 3 new" for s in range(5, 9)])
        sources = figures.locator("img").evaluate_all("imgs => imgs.map(i => i.src)")
        assert sources == [f"data:image/png;base64,{v['b64_json']}" for v in expected]  # the API's bytes
        assert page.locator("#vary-source").evaluate("img => img.naturalWidth") == 32
        page.screenshot(path=tmp_path / "variations.png")

        # a variation's tokens go into the editor; unconditional by strength; an error in the one shape
        figures.nth(1).click()
        expect(page.locator("#psnr")).to_have_text("\u221e dB")
        ids = page.locator("#tokens input").evaluate_all("inputs => inputs.map(i => Number(i.value))")
        assert ids == expected[1]["tokens"]
        page.select_option("#vary-class", "")
        page.click("#vary-button")
        expect(figures.locator("figcaption").first).to_contain_text("unconditional \u00b7 seed 5 \u00b7 8 new")
        page.fill("#vary-n", "65")
        page.click("#vary-button")
        expect(page.locator("#error")).to_contain_text("400 invalid_request: at most 64 images per request")
        assert problems == []
        browser.close()
    if os.environ.get("TITOK_UPDATE_SCREENSHOT"):
        # a 256-colour palette keeps the page's colours at a third of the bytes
        shot = Image.open(tmp_path / "variations.png").convert("RGB").quantize(256)
        shot.save(ROOT / "docs" / "playground-variations.png", optimize=True)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is missing: `make tools` (apt-get install chromium)")
def test_api_reference_renders_offline(server):
    """/docs (Swagger UI) and /redoc render the operations with every request to another host refused: their scripts
    come from the gateway; Swagger UI offers Authorize for the Bearer key."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page()
        elsewhere = []

        def only_the_gateway(route):
            if route.request.url.startswith(server.url):
                return route.continue_()
            elsewhere.append((route.request.resource_type, route.request.url))
            return route.abort()

        page.route("**/*", only_the_gateway)
        page.set_default_timeout(30_000)
        page.goto(f"{server.url}/docs")
        expect(page.locator(".opblock-summary-path", has_text="/v1/images/generations")).to_have_count(1)
        assert page.locator(".opblock").count() >= 8
        expect(page.locator("button.authorize")).to_be_visible()
        page.goto(f"{server.url}/redoc")
        expect(page.locator("h2", has_text="OpenAI-compatible image generation")).to_be_visible()
        assert page.locator("h2", has_text="Class-conditional images").count() == 1
        browser.close()
    # nothing the pages need comes from elsewhere (ReDoc's bundle links only its "powered by" logo to its CDN)
    assert [url for kind, url in elsewhere if kind != "image"] == [], elsewhere
