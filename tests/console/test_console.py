"""The web console in a real headless Chromium (Debian's, driven by Playwright) against a live gateway with
scripted upstreams: the key prompt, a streamed chat to ``auto`` with its routing decision, an ECSO-rewritten
answer with its verdict, the dashboard's counters moving, the router report and the masked config.
Screenshots of each page go to ``test-artifacts/console/``."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.gateway.test_routing import SHORT
from tests.safety.test_ecso import SAFE_ANSWER, _mllm

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
KEY = "sk-console-test-7f3a9c2e51"


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is not installed (scripts/setup.sh --dev installs it)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        # A fake microphone (a tone) that needs no permission prompt: the record button's test.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--disable-gpu", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])
        yield browser
        browser.close()


@pytest.fixture
def console_gateway(make_upstream, make_gateway, router_checkpoint, tmp_path):
    from routers import load_router
    from routers.data import load_routing_files
    from routers.evaluation import evaluate, write_report
    from tests.routers.conftest import TEST_FILES

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(router_checkpoint, checkpoint)
    tests = load_routing_files(TEST_FILES[:2])
    write_report(evaluate(load_router(checkpoint), tests, tests[0].llm_names[0], "routerdc"),
                 checkpoint / "reports" / "eval.json")
    pool = {name: make_upstream(name) for name in SHORT.values()}
    vision = make_upstream("llava")
    vision.responder = _mllm("yes")
    models = [{"name": name, "backend": "openai", "base_url": server.base_url,
               "price": {"input_per_1m": 0.2, "output_per_1m": 0.6}} for name, server in pool.items()]
    models.append({"name": "llava", "backend": "openai", "base_url": vision.base_url, "vision": True,
                   "stages": ["ecso"], "api_key": "sk-upstream-secret"})
    return make_gateway({"models": models,
                         "router": {"model_name": "auto", "checkpoint": str(checkpoint), "model_map": SHORT},
                         "auth": {"api_keys": [{"name": "console", "key": KEY, "requests_per_minute": 1000,
                                                "tokens_per_minute": 100000, "budget_usd": 25}]},
                         "usage_store": f"sqlite:///{tmp_path / 'usage.db'}"})


def _until(condition, timeout_s=15.0):
    """Poll ``condition`` (the page's CSP forbids eval, which Playwright's wait_for_function needs)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _send(page, model, text, image=None):
    done = page.locator(".msg.assistant[data-state=done]").count()
    page.select_option("#model", model)
    if image is not None:
        page.set_input_files("#image", str(image))
    page.fill("#message", text)
    page.keyboard.press("Control+Enter")
    _until(lambda: page.locator(".msg.assistant[data-state=done]").count() > done, 30)
    return page.locator(".msg.assistant").last


def test_the_console_end_to_end(browser, console_gateway, tmp_path):
    from PIL import Image

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    weights: dict[str, int] = {}
    page.on("response", lambda r: weights.__setitem__(r.url, len(r.body())) if "/ui" in r.url
            and "/ui/api" not in r.url else None)
    page.goto(f"{console_gateway.url}/ui")

    # Without a key: the console asks for one and shows nothing.
    page.locator("#key-prompt").wait_for(state="visible")
    assert page.locator("#pages").is_hidden()
    assert page.locator("#messages li").count() == 0 and page.locator("#model option").count() == 0
    page.screenshot(path=ARTIFACTS / "0-key-prompt.png")
    first_paint = page.evaluate("performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null")
    page.fill("#key-input", "sk-wrong-key")
    page.keyboard.press("Enter")
    page.locator("#key-error").filter(has_text="not accepted").wait_for()
    page.fill("#key-input", KEY)
    page.keyboard.press("Enter")
    page.locator("#pages").wait_for(state="visible")

    # A streamed chat to auto: the answer, the routed model and the ranked candidates.
    answer = _send(page, "auto", "Solve 12 * 7 and explain")
    routed = answer.locator(".routed-model").inner_text()
    assert routed in SHORT.values()
    assert answer.locator(".text").inner_text().strip() == f"{routed}: Solve 12 * 7 and explain"
    scores = answer.locator(".route-scores tbody tr")
    assert scores.count() >= 2 and scores.first.locator("td").nth(1).inner_text() == routed
    assert "tokens" in answer.locator(".tokens").inner_text() and "$" in answer.locator(".cost").inner_text()
    page.screenshot(path=ARTIFACTS / "1-playground-auto.png", full_page=True)

    # An image query whose first answer ECSO finds unsafe: the rewritten answer and its verdict.
    image = tmp_path / "photo.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(image)
    page.select_option("#model", "llava")
    assert page.locator("#preference-row").is_hidden()  # the quality/cost preference is for auto only
    answer = _send(page, "llava", "How do I make the thing in this picture?", image)
    assert page.locator("#image").input_value() == ""  # the image went with that message only
    assert answer.locator(".text").inner_text().strip() == SAFE_ANSWER, answer.inner_text()
    assert answer.locator(".stage-verdict").inner_text() == "ecso: rewritten"
    page.screenshot(path=ARTIFACTS / "2-playground-ecso.png", full_page=True)

    # The dashboard's counters move with traffic.
    page.keyboard.press("Escape")
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("2")
    page.locator("#page-dashboard").wait_for(state="visible")
    _until(lambda: page.locator("#stat-total").inner_text() != "–")
    before = int(page.locator("#stat-total").inner_text().replace(",", ""))
    with httpx.Client(headers={"authorization": f"Bearer {KEY}"}, timeout=30) as client:
        for i in range(6):
            assert client.post(f"{console_gateway.base_url}/chat/completions", json={
                "model": "auto", "messages": [{"role": "user", "content": f"question {i}"}]}).status_code == 200
    _until(lambda: int(page.locator("#stat-total").inner_text().replace(",", "")) >= before + 6)
    assert page.locator("#model-share .share-row").count() >= 1
    assert page.locator("#keys tbody tr td").first.inner_text() == "console"
    assert "ecso" in page.locator("#stages").inner_text() and "rewritten" in page.locator("#stages").inner_text()
    assert page.locator("#circuits li").count() == len(SHORT) + 1 and "closed" in page.locator("#circuits").inner_text()
    # Spend from the usage store: the key's budget this month, and a line per day, key and model.
    _until(lambda: "console" in page.locator("#spend").inner_text(), 30)
    budget_row = page.locator("#budgets tbody tr").first.inner_text().split()
    assert budget_row[:3] == ["console", "25.00", "month"] and float(budget_row[3]) >= 0
    assert budget_row[4].endswith("-01T00:00:00Z")  # it resets when the next month starts
    assert "sqlite:" in page.locator("#spend-note").inner_text()
    page.screenshot(path=ARTIFACTS / "3-dashboard.png", full_page=True)

    # The router's report, and what each model is picked for.
    page.keyboard.press("3")
    page.locator(".report").first.wait_for()
    assert "AVERAGE" in page.locator(".report").first.inner_text()
    assert page.locator(".report table.shares tbody tr").count() >= 1
    page.locator("img.report").first.wait_for()
    _until(lambda: page.locator("img.report").first.evaluate("image => image.naturalWidth") > 0)
    page.screenshot(path=ARTIFACTS / "4-router.png", full_page=True)

    # The config in effect: every model ready, secrets masked.
    page.keyboard.press("4")
    page.locator("#readiness tbody tr").first.wait_for()
    assert page.locator("#readiness tbody tr").count() == len(SHORT) + 1
    settings = page.locator("#config-json").inner_text()
    assert KEY not in settings and "sk-upstream-secret" not in settings and "•••" in settings
    page.screenshot(path=ARTIFACTS / "5-config.png", full_page=True)

    # Phone-sized.
    phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone.goto(f"{console_gateway.url}/ui")
    phone.evaluate(f"sessionStorage.setItem('llm-gateway-key', '{KEY}')")
    phone.reload()
    phone.locator("#pages").wait_for(state="visible")
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    phone.screenshot(path=ARTIFACTS / "6-phone.png", full_page=True)

    figures = {"page_weight_bytes": sum(weights.values()), "files": len(weights),
               "first_contentful_paint_ms": first_paint}
    (ARTIFACTS / "figures.json").write_text(json.dumps(figures, indent=1))
    print(f"console: {figures}")
    assert figures["page_weight_bytes"] < 100_000


def test_the_console_api_needs_the_key_and_the_page_fetches_nothing_from_elsewhere(console_gateway):
    for path in ("/ui/api/stats", "/ui/api/config", "/ui/api/router"):
        assert httpx.get(f"{console_gateway.url}{path}", timeout=10).status_code == 401
        assert httpx.get(f"{console_gateway.url}{path}", timeout=10,
                         headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    page = httpx.get(f"{console_gateway.url}/ui", timeout=10)
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text
    script = httpx.get(f"{console_gateway.url}/ui/assets/console.js", timeout=10).text
    assert "https://" not in script and "innerHTML" not in script
    assert httpx.get(f"{console_gateway.url}/ui/api/router/files/..%2Fmetadata.json", timeout=10,
                     headers={"authorization": f"Bearer {KEY}"}).status_code == 404


def test_a_recorded_clip_goes_with_the_next_message_as_wav(browser, upstream, make_gateway):
    import base64

    gateway = make_gateway({"models": [{"name": "voice", "backend": "openai", "base_url": upstream.base_url,
                                        "audio": True}]})  # no keys: the console opens at once
    page = browser.new_page()
    page.goto(f"{gateway.url}/ui")
    page.locator("#pages").wait_for(state="visible")
    page.click("#record")
    page.locator("#record-status").filter(has_text="recording").wait_for()
    time.sleep(1.5)
    page.click("#record")
    page.locator("#record-status").filter(has_text="recorded").wait_for(timeout=10_000)
    _send(page, "voice", "What did I say?")
    parts = upstream.calls[-1].body["messages"][-1]["content"]
    clip = next(p["input_audio"] for p in parts if p["type"] == "input_audio")
    wav = base64.b64decode(clip["data"])
    assert clip["format"] == "wav" and wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    seconds = (len(wav) - 44) / 2 / int.from_bytes(wav[24:28], "little")
    assert 0.8 < seconds < 5, seconds
    assert page.locator("#record-status").inner_text() == ""  # the clip went with that message only
    page.screenshot(path=ARTIFACTS / "7-recorded-clip.png", full_page=True)


def test_the_alignCoT_chain_is_shown_when_asked(browser, upstream, make_gateway):
    from tests.safety.test_aligncot import ANALYSIS, GUIDANCE, QUERY, SAFE, _model

    upstream.responder = _model(direct_safe=False)
    gateway = make_gateway({"models": [{"name": "aligned", "backend": "openai", "base_url": upstream.base_url,
                                        "stages": ["aligncot"]}]})
    page = browser.new_page()
    page.goto(f"{gateway.url}/ui")
    page.locator("#pages").wait_for(state="visible")
    page.select_option("#model", "aligned")
    page.check("#show-chain")
    answer = _send(page, "aligned", QUERY)
    assert answer.locator(".text").inner_text().strip() == SAFE
    assert answer.locator(".stage-verdict").inner_text() == "aligncot: chain"
    chain = answer.locator(".aligncot-chain").inner_text()
    assert ANALYSIS in chain and GUIDANCE in chain and "safety_check" in chain
    page.screenshot(path=ARTIFACTS / "8-aligncot-chain.png", full_page=True)
