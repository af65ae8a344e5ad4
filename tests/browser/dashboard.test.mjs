// The dashboard in real headless Chromium against the real binary: create a config through
// the UI, fire requests with the tester, watch the counters, the chart and a 429 arrive
// live, check that request-derived text is never HTML, and save screenshots.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.RATEWARDEN_BIN || join(ROOT, "target/debug/ratewarden");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = join(ROOT, "target/artifacts");
const WAIT = 15_000;
const XSS = "<img src=x onerror=alert(1)>";

// Starts the binary on a free port with a fresh database; resolves with its URL.
function startServer() {
  const db = join(mkdtempSync(join(tmpdir(), "ratewarden-browser-")), "b.db");
  const child = spawn(BIN, ["--bind", "127.0.0.1:0", "--database", db], {
    env: { ...process.env, RUST_LOG: "info" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  return new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error("the server did not start")), WAIT);
    child.on("exit", (code) => reject(new Error(`the server exited with ${code}`)));
    createInterface({ input: child.stderr }).on("line", (line) => {
      const m = line.match(/listening on (http:\/\/[\d.:]+)/);
      if (m) {
        clearTimeout(timer);
        resolveUrl({ url: m[1], child });
      }
    });
  });
}

const number = (text) => Number(String(text).replace(/[^\d]/g, ""));

test("the dashboard shows live traffic and steers the limiter", { timeout: 120_000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium is required at ${CHROMIUM} (apt-get install chromium)`);
  assert.ok(existsSync(BIN), `the server binary is required at ${BIN} (cargo build)`);
  const { url, child } = await startServer();
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
           "--disable-component-update", "--disable-sync", "--disable-quic"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const dialogs = [];
    page.on("dialog", async (d) => { dialogs.push(d.message()); await d.dismiss(); });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));

    await page.goto(url + "/dashboard");
    await page.waitForFunction(() => document.querySelector("#conn").textContent === "live", null, { timeout: WAIT });

    // Create a config through the UI; a bad one shows the server's message inline.
    await page.click("#new-config");
    await page.fill("#config-form [name=endpoint]", "/api/*");
    await page.fill("#config-form [name=requests_per_window]", "0");
    await page.fill("#config-form [name=window_seconds]", "60");
    await page.selectOption("#config-form [name=algorithm]", "fixed_window");
    await page.click("#config-save");
    await page.waitForFunction(() => /requests_per_window/.test(document.querySelector("#config-error").textContent),
                               null, { timeout: WAIT });
    await page.fill("#config-form [name=requests_per_window]", "5");
    await page.click("#config-save");
    await page.waitForFunction(() => [...document.querySelectorAll("#config-rows td.endpoint")]
      .some((td) => td.textContent === "/api/*"), null, { timeout: WAIT });
    await page.waitForSelector("#config-form", { state: "hidden", timeout: WAIT }); // closes on success
    // Reloads triggered by the feed and by the form never duplicate rows.
    await page.waitForFunction(() => document.querySelectorAll("#config-rows tr").length === 2, null, { timeout: WAIT });

    // Fire 20 requests as one client: 5 pass, 15 are limited.
    await page.fill("#tester [name=path]", "/api/data");
    await page.fill("#tester [name=client]", "browser-test");
    await page.fill("#tester [name=count]", "20");
    await page.click("#tester button[type=submit]");
    await page.waitForSelector("#tester-passed", { timeout: WAIT });
    assert.equal(await page.textContent("#tester-passed"), "5");
    assert.equal(await page.textContent("#tester-limited"), "15");

    // The totals, the chart and the event stream follow live.
    await page.waitForFunction(() => {
      const n = (id) => Number(document.querySelector(id).textContent.replace(/[^\d]/g, ""));
      return n("#kpi-total") >= 20 && n("#kpi-blocked") >= 15;
    }, null, { timeout: WAIT });
    await page.waitForFunction(() => Number(document.querySelector("#chart").dataset.blocked) > 0, null, { timeout: WAIT });
    await page.waitForFunction(() => [...document.querySelectorAll("#events .tag-block")]
      .some((t) => t.textContent === "429"), null, { timeout: WAIT });
    assert.ok(number(await page.textContent("#kpi-blocked")) >= 15);

    // Request-derived text is text: a request to /api/<img src=x onerror=alert(1)> shows
    // in the event stream as those characters, creates no element and runs no script.
    await fetch(url + "/api/" + encodeURIComponent(XSS), { headers: { "X-Client-ID": "xss" } });
    await page.waitForFunction((xss) => [...document.querySelectorAll("#events .ev-detail")]
      .some((e) => e.textContent.includes("/api/" + xss)), XSS, { timeout: WAIT });
    assert.equal(await page.evaluate(() => document.querySelectorAll("#events img").length), 0);

    // The client inspector watches one client's quota.
    await page.fill("#inspector [name=client]", "browser-test");
    await page.click("#inspector button[type=submit]");
    await page.waitForFunction(() => [...document.querySelectorAll("#quota-rows tr")]
      .some((tr) => tr.dataset.endpoint === "/api/*" && tr.querySelector(".remaining").textContent.startsWith("0 /")),
      null, { timeout: WAIT });

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, "dashboard.png"), fullPage: true });

    // A narrow window: nothing overflows sideways.
    await page.setViewportSize({ width: 420, height: 800 });
    await page.waitForFunction(() => document.documentElement.scrollWidth <= window.innerWidth + 1, null, { timeout: WAIT });
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-narrow.png"), fullPage: true });

    assert.deepEqual(dialogs, [], "no dialog (no injected script) opened");
    assert.deepEqual(errors, [], "no script error on the page");
  } finally {
    await browser.close();
    child.kill("SIGTERM");
  }
});
