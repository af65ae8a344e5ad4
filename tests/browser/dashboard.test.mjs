// The dashboard in real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core; no browser is ever downloaded) against the real server binary:
// create a config through the UI, fire requests with the tester, watch the client
// inspector, the counters, the chart and a 429 arrive live, check that request-derived
// text is inserted as text (never HTML); with a token; in reverse-proxy mode in front of
// a node:http upstream; the operators' features (shadow, overrides, history, top
// clients, reset); no stale state across a load and a restart; and, with every card
// filled, the layout at 1400 and 420 px (screenshots in target/artifacts/), axe-core's
// accessibility rules and a keyboard-only session.
//
//   cd tests/browser && npm ci && npm test
//
// RATEWARDEN_BIN overrides the binary (default <repo>/target/debug/ratewarden, built by
// `cargo build`); CHROMIUM overrides the browser (default /usr/bin/chromium). A missing
// binary or browser fails the test; it never skips. RATEWARDEN_SCREENSHOT=<path> also
// saves a 1280 x 800 picture of the dashboard with traffic on it there (docs/dashboard.png).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { createServer } from "node:http";
import { chromium } from "playwright-core";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.RATEWARDEN_BIN || join(ROOT, "target/debug/ratewarden");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = join(ROOT, "target/artifacts");
const WAIT = 15_000; // the longest any single wait may take

// Markup that runs script if it is ever inserted as HTML. A request path may hold
// spaces (percent-encoded); a config endpoint may not, so its payload has none.
const XSS_PATH = "<img src=x onerror=alert(1)>";
const XSS_ENDPOINT = "/x/<img/src/onerror=alert(1)>";

// Starts the binary on a free port with a fresh database. Resolves once it logged
// `listening on http://ADDR `; stderr keeps being drained (and its tail kept for
// failure messages) so the server never blocks on a full pipe.
function startServer(dir, extra = [], logLevel = "info", bind = "127.0.0.1:0") {
  const child = spawn(BIN, ["--bind", bind, "--database", join(dir, "ratewarden.db"), ...extra], {
    env: { ...process.env, RUST_LOG: logLevel },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const log = [];
  const all = [];
  const ready = new Promise((resolveReady, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not start within ${WAIT} ms:\n${log.join("\n")}`)), WAIT);
    const fail = (err) => { clearTimeout(timer); reject(err); };
    child.on("error", (e) => fail(new Error(`cannot run ${BIN}: ${e.message}`)));
    child.on("exit", (code, signal) => fail(new Error(`the server exited (${code ?? signal}):\n${log.join("\n")}`)));
    createInterface({ input: child.stderr }).on("line", (line) => {
      log.push(line);
      all.push(line);
      if (log.length > 50) log.shift();
      const m = line.match(/listening on (http:\/\/[\d.]+:\d+) /);
      if (m) { clearTimeout(timer); resolveReady(m[1]); }
    });
  });
  ready.catch(() => {}); // awaited by the caller; never an unhandled rejection
  return { child, ready, log, all };
}

// SIGTERM, then SIGKILL if it has not exited within WAIT; resolves once it is gone.
async function stopServer(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), WAIT);
  await exited;
  clearTimeout(timer);
}

// Waits for a predicate evaluated in the page (polled on animation frames).
const until = (page, fn, arg) => page.waitForFunction(fn, arg, { timeout: WAIT });

const launch = (extra = []) => chromium.launch({
  executablePath: CHROMIUM,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", "--disable-quic", ...extra],
});

// Fills the config form's fields by name, in order: a select gets the option of that
// value, any other field the text.
async function fillConfig(page, fields) {
  for (const [name, value] of Object.entries(fields)) {
    const field = `#config-form [name=${name}]`;
    if (await page.evaluate((sel) => document.querySelector(sel).tagName === "SELECT", field)) await page.selectOption(field, value);
    else await page.fill(field, value);
  }
}

// A 1400 px page on the dashboard with its feed live, confirmations accepted; the page's
// uncaught errors are collected in `pageErrors`.
async function openDashboard(browser, url) {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("dialog", (d) => d.accept().catch(() => {}));
  await page.goto(url + "/dashboard");
  await until(page, () => document.querySelector("#conn").textContent.trim() === "live");
  return { page, pageErrors };
}

// Runs `body` with a fresh server (started with `args`) and a browser, and always stops
// both and removes the server's directory afterwards. `body` may replace `server.child`
// (a restart); the one there at the end is stopped.
async function withServer(args, logLevel, body, browserArgs = []) {
  const dir = mkdtempSync(join(tmpdir(), "ratewarden-browser-"));
  let server = null;
  let browser = null;
  try {
    server = startServer(dir, args, logLevel);
    const url = await server.ready;
    browser = await launch(browserArgs);
    await body({ url, browser, server, dir });
  } finally {
    try { if (browser) await browser.close(); } finally {
      try { if (server) await stopServer(server.child); } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
  }
}

test("the dashboard shows live traffic and steers the limiter", { timeout: 180_000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium is required at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`);
  assert.ok(existsSync(BIN), `the server binary is required at ${BIN} (cargo build, or set RATEWARDEN_BIN)`);

  await withServer([], "info", async ({ url, browser }) => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const dialogs = [];
    page.on("dialog", (d) => { dialogs.push(`${d.type()}: ${d.message()}`); d.dismiss().catch(() => {}); });
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(String(e)));

    await page.goto(url + "/dashboard");
    await until(page, () => document.querySelector("#conn").textContent.trim() === "live");

    // ---- configs: a bad one shows the server's message inline, then a good one ----
    await page.click("#new-config");
    await page.locator("#config-form").waitFor({ state: "visible", timeout: WAIT });
    await fillConfig(page, { endpoint: "/api/*", algorithm: "fixed_window", requests_per_window: "0", window_seconds: "60" });
    await page.click("#config-save");
    await until(page, () => /requests_per_window/.test(document.querySelector("#config-error").textContent));
    assert.ok(await page.isVisible("#config-form"), "the form stays open after a rejected create");

    await page.fill("#config-form [name=requests_per_window]", "5");
    await page.click("#config-save");
    await until(page, () => [...document.querySelectorAll("#config-rows tr")].some((tr) =>
      tr.querySelector("td.endpoint")?.textContent === "/api/*" && tr.children[1].textContent === "fixed_window"
      && tr.children[2].textContent === "5" && tr.children[3].textContent === "60 s"));
    await page.locator("#config-form").waitFor({ state: "hidden", timeout: WAIT });
    // "*" and "/api/*": the reloads triggered by the form and by the feed never duplicate rows.
    await until(page, () => document.querySelectorAll("#config-rows tr").length === 2);

    // ---- tester, then the inspector, inside one fixed window ----
    // fixed_window windows are aligned to the minute: start with at least 12 s left in
    // it, so that the 5 allowed requests and the inspector's "0 left" belong to one window.
    await page.waitForFunction(() => Date.now() % 60_000 < 48_000, null, { timeout: WAIT, polling: 200 });
    await page.fill("#tester [name=path]", "/api/data");
    await page.fill("#tester [name=client]", "browser-test");
    await page.fill("#tester [name=count]", "20");
    await page.click("#tester button[type=submit]");
    await page.locator("#tester-passed").waitFor({ timeout: WAIT });
    assert.equal(await page.textContent("#tester-passed"), "5");
    assert.equal(await page.textContent("#tester-limited"), "15");

    await page.fill("#inspector [name=client]", "browser-test");
    await page.click("#inspector button[type=submit]");
    await until(page, () => [...document.querySelectorAll("#quota-rows tr")].some((tr) =>
      tr.dataset.endpoint === "/api/*" && tr.querySelector(".remaining").textContent.trim().startsWith("0")));

    // ---- totals, chart and events follow live ----
    await until(page, () => {
      const n = (sel) => Number(document.querySelector(sel).textContent.replace(/[^\d]/g, "") || NaN);
      return n("#kpi-total") >= 20 && n("#kpi-blocked") >= 15;
    });
    await until(page, () => Number(document.querySelector("#chart").dataset.blocked) > 0);
    await until(page, () => [...document.querySelectorAll("#events .tag-block")].some((t) => t.textContent === "429"));

    // ---- the docs' picture of the dashboard, only when asked for ----
    // RATEWARDEN_SCREENSHOT=<path>: the page as a user sees it after this traffic
    // (docs/dashboard.png is made this way; see docs/testing.md). Taken before the
    // markup checks below put their deliberately odd paths and configs on the page.
    if (process.env.RATEWARDEN_SCREENSHOT) {
      // A few seconds of mixed traffic first, so that the chart shows a shape: each
      // half second a handful of clients pass ("*") and browser-test is refused (/api/*).
      for (let tick = 0; tick < 16; tick++) {
        const batch = [];
        for (let i = 0; i < 3 + (tick % 4); i++) {
          batch.push(fetch(url + "/", { headers: { "X-Client-ID": `docs-${tick % 5}-${i}` } }));
        }
        for (let i = 0; i < 1 + (tick % 3); i++) {
          batch.push(fetch(url + "/api/data", { headers: { "X-Client-ID": "browser-test" } }));
        }
        await Promise.all(batch);
        await new Promise((r) => setTimeout(r, 500));
      }
      await page.waitForTimeout(1500); // the last seconds reach the chart
      await page.evaluate(() => window.scrollTo(0, 0));
      await page.screenshot({ path: process.env.RATEWARDEN_SCREENSHOT });
    }

    // ---- request-derived text is text ----
    // A path: the event shows it next to the config it counted against (/api/*).
    const r1 = await fetch(url + "/api/%3Cimg%20src=x%20onerror=alert(1)%3E", { headers: { "X-Client-ID": "xss" } });
    assert.equal(r1.status, 404);
    await until(page, (xss) => [...document.querySelectorAll("#events .ev-detail")]
      .some((e) => e.textContent.startsWith(`xss /api/${xss} (/api/*)`)), XSS_PATH);

    // A config endpoint, created through the admin API, in the config table and the events.
    const created = await fetch(url + "/admin/configs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ endpoint: XSS_ENDPOINT, requests_per_window: 5, window_seconds: 60, algorithm: "fixed_window" }),
    });
    assert.ok(created.ok, `creating ${XSS_ENDPOINT}: ${created.status} ${await created.text()}`);
    const r2 = await fetch(url + XSS_ENDPOINT.replace("<", "%3C").replace(">", "%3E"), { headers: { "X-Client-ID": "xss" } });
    assert.equal(r2.status, 404);
    assert.equal(r2.headers.get("x-ratelimit-limit"), "5", "the request counted against the new config");
    await until(page, (ep) => [...document.querySelectorAll("#events .ev-detail")]
      .some((e) => e.textContent.startsWith(`xss ${ep} · `)), XSS_ENDPOINT);
    await until(page, (ep) => [...document.querySelectorAll("#config-rows td.endpoint")]
      .some((td) => td.textContent === ep), XSS_ENDPOINT);
    assert.equal(await page.evaluate(() => document.querySelectorAll("#events img, #config-rows img").length), 0,
                 "no element was created from request-derived text");

    // The forms scrolled the page; from the top, the sticky header sits where it belongs.
    await page.evaluate(() => window.scrollTo(0, 0));
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, "dashboard.png"), fullPage: true });

    // (Narrow screens: the last test, with every card filled.)

    // Last, so that any late onerror handler had the whole run to fire.
    assert.equal(await page.evaluate(() => document.querySelectorAll("img").length), 0);
    assert.deepEqual(dialogs, [], "no dialog opened (no injected script ran)");
    assert.deepEqual(pageErrors, [], "no uncaught error on the page");
  });
});

test("with an admin token the dashboard asks for it and never puts it in a URL", { timeout: 120_000 }, async () => {
  const TOKEN = "tok/en=1+secret";
  await withServer(["--admin-token", TOKEN], "ratewarden=debug", async ({ url, browser, server }) => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const urls = [];
    page.on("request", (r) => urls.push(r.url()));
    page.on("websocket", (ws) => urls.push(ws.url()));
    await page.goto(url + "/dashboard");
    await page.locator("#token-dialog").waitFor({ state: "visible", timeout: WAIT });
    await page.fill("#token-input", TOKEN);
    await page.click("#token-form button[value=ok]");
    // The feed authenticates with the token as a subprotocol, and goes live.
    await until(page, () => document.querySelector("#conn").textContent.trim() === "live");
    const r = await fetch(url + "/api/data", { headers: { "X-Client-ID": "tokened" } });
    assert.equal(r.status, 200);
    await until(page, () => [...document.querySelectorAll("#events .ev-detail")]
      .some((e) => e.textContent.startsWith("tokened ")));
    assert.ok(urls.some((u) => u.includes("/ws/global")), `the page opened the feed: ${urls}`);
    for (const u of urls) {
      assert.ok(!u.includes("token=") && !u.includes(encodeURIComponent(TOKEN)) && !u.includes(TOKEN), u);
    }
    await stopServer(server.child);
    assert.ok(server.all.some((l) => l.includes('request method=GET path="/ws/global" status=101')), "requests were logged");
    assert.ok(!server.all.some((l) => l.includes(TOKEN) || l.includes(encodeURIComponent(TOKEN))), "the token never reached the log");
  });
});

test("without a token the dashboard works through loopback and allowed names, and a rebound name reads nothing", { timeout: 120_000 }, async () => {
  // Chromium resolves these names to 127.0.0.1 itself: evil.example plays a page whose
  // name was rebound to this machine (DNS rebinding); ops.internal is --allowed-hosts.
  const resolve = "--host-resolver-rules=MAP ops.internal 127.0.0.1, MAP evil.example 127.0.0.1";
  await withServer(["--allowed-hosts", "ops.internal"], "info", async ({ url, browser }) => {
    const port = new URL(url).port;
    const r = await fetch(url + "/admin/configs", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ endpoint: "/secret/*", requests_per_window: 5, window_seconds: 60 }) });
    assert.equal(r.status, 201);
    for (const host of ["localhost", "127.0.0.1", "ops.internal"]) {
      const { page, pageErrors } = await openDashboard(browser, `http://${host}:${port}`);
      await until(page, () => [...document.querySelectorAll("#config-rows td.endpoint")].some((td) => td.textContent === "/secret/*"));
      assert.ok(await page.locator("#access-error").isHidden(), host);
      assert.deepEqual(pageErrors, [], host);
      await page.close();
    }
    // The rebound page is same-origin with the server to the browser, yet reads nothing
    // and opens no feed; the page says why.
    const page = await browser.newPage();
    await page.goto(`http://evil.example:${port}/dashboard`);
    await page.locator("#access-error").waitFor({ state: "visible", timeout: WAIT });
    assert.match(await page.locator("#access-error").textContent(), /--allowed-hosts/);
    assert.equal((await page.locator("#conn").textContent()).trim(), "refused");
    const reads = await page.evaluate(async () => Promise.all(
      ["/admin/configs", "/admin/stats", "/admin/top", "/metrics"].map(async (p) => {
        const res = await fetch(p);
        return `${p} ${res.status} ${(await res.text()).includes("/secret/")}`;
      })));
    assert.deepEqual(reads, ["/admin/configs 403 false", "/admin/stats 403 false", "/admin/top 403 false", "/metrics 403 false"]);
    assert.equal(await page.locator("#config-rows td.endpoint").count(), 0);
  }, [resolve]);
});

test("a calendar quota, a keyed config and one of several limits made and changed from the form", { timeout: 120_000 }, async () => {
  await withServer([], "info", async ({ url, browser }) => {
    const { page, pageErrors } = await openDashboard(browser, url);
    const row = (endpoint) => page.evaluate((ep) => {
      const tr = [...document.querySelectorAll("#config-rows tr")].find((r) => r.querySelector("td.endpoint")?.textContent === ep);
      return tr ? [...tr.children].slice(0, 4).map((td) => td.textContent) : null;
    }, endpoint);
    await page.click("#new-config");
    await page.locator("#config-form").waitFor({ state: "visible", timeout: WAIT });
    // The window field keeps whatever it holds: a calendar sets the window.
    await fillConfig(page, { endpoint: "/api/reports/*", algorithm: "fixed_window", requests_per_window: "9",
      window_seconds: "60", calendar: "month", key: "ip" });
    await page.click("#config-save");
    await page.locator("#config-form").waitFor({ state: "hidden", timeout: WAIT });
    await until(page, () => [...document.querySelectorAll("#config-rows td")].some((td) => td.textContent === "month (UTC)"));
    assert.deepEqual(await row("/api/reports/*"), ["/api/reports/*", "fixed_window", "9", "month (UTC)"]);
    let saved = await (await fetch(url + "/admin/configs/api/reports/*")).json();
    assert.deepEqual([saved.calendar, saved.window_seconds, saved.key], ["month", 2592000, "ip"]);
    // Edit: no calendar ("none"), back to the client key (the field emptied).
    await page.click(`#config-rows tr[data-key="/api/reports/*"] button[data-role=edit]`);
    await page.locator("#config-form").waitFor({ state: "visible", timeout: WAIT });
    assert.equal(await page.inputValue("#config-form [name=calendar]"), "month");
    await page.selectOption("#config-form [name=calendar]", "");
    await page.fill("#config-form [name=key]", "");
    await page.click("#config-save");
    await page.locator("#config-form").waitFor({ state: "hidden", timeout: WAIT });
    await until(page, () => [...document.querySelectorAll("#config-rows td")].some((td) => td.textContent === "2592000 s"));
    saved = await (await fetch(url + "/admin/configs/api/reports/*")).json();
    assert.deepEqual([saved.calendar, saved.window_seconds, saved.key], [undefined, 2592000, undefined]);

    // Several limits: written as a list in the form, shown one per line, edited, and
    // each limit's quota in the inspector.
    const layered = [
      { name: "burst", algorithm: "token_bucket", requests_per_window: 5, window_seconds: 1 },
      { name: "daily", algorithm: "sliding_window", requests_per_window: 100, window_seconds: 86400 },
    ];
    await page.click("#new-config");
    await page.locator("#config-form").waitFor({ state: "visible", timeout: WAIT });
    await fillConfig(page, { endpoint: "/api/layered/*", limits: JSON.stringify(layered) });
    await page.click("#config-save");
    await page.locator("#config-form").waitFor({ state: "hidden", timeout: WAIT });
    await until(page, () => [...document.querySelectorAll("#config-rows td")].some((td) => td.textContent === "2 limits"));
    assert.deepEqual(await row("/api/layered/*"), ["/api/layered/*", "2 limits",
      "burst: 5 / 1 s token_bucket; daily: 100 / 86400 s sliding_window", "–"]);
    await page.click(`#config-rows tr[data-key="/api/layered/*"] button[data-role=edit]`);
    await page.locator("#config-form").waitFor({ state: "visible", timeout: WAIT });
    assert.deepEqual(JSON.parse(await page.inputValue("#config-form [name=limits]")), layered);
    layered[1].requests_per_window = 50;
    await fillConfig(page, { limits: JSON.stringify(layered) });
    await page.click("#config-save");
    await page.locator("#config-form").waitFor({ state: "hidden", timeout: WAIT });
    saved = await (await fetch(url + "/admin/configs/api/layered/*")).json();
    assert.deepEqual(saved.limits.map((l) => [l.name, l.requests_per_window]), [["burst", 5], ["daily", 50]]);
    assert.equal(saved.requests_per_window, undefined);
    // A config of one limit is still edited through its top-level fields.
    await page.click(`#config-rows tr[data-key="/api/reports/*"] button[data-role=edit]`);
    await page.locator("#config-form").waitFor({ state: "visible", timeout: WAIT });
    await fillConfig(page, { requests_per_window: "12" });
    await page.click("#config-save");
    await page.locator("#config-form").waitFor({ state: "hidden", timeout: WAIT });
    saved = await (await fetch(url + "/admin/configs/api/reports/*")).json();
    assert.equal(saved.requests_per_window, 12);
    // The inspector: a row per limit.
    for (let i = 0; i < 2; i++) await fetch(url + "/api/layered/x", { headers: { "X-Client-ID": "lay" } });
    await page.fill("#inspector [name=client]", "lay");
    await page.press("#inspector [name=client]", "Enter");
    await until(page, () => document.querySelectorAll("#quota-rows tr").length === 2);
    const quotas = await page.evaluate(() => [...document.querySelectorAll("#quota-rows tr")]
      .map((tr) => [tr.querySelector("td.endpoint").textContent, tr.querySelector("td.remaining").textContent]));
    assert.deepEqual(quotas, [["/api/layered/* · burst", "3 / 5"], ["/api/layered/* · daily", "48 / 50"]]);
    // A request's event keeps every limit's row current, not only the binding one's.
    await fetch(url + "/api/layered/x", { headers: { "X-Client-ID": "lay" } });
    await until(page, () => [...document.querySelectorAll("#quota-rows td.remaining")].map((td) => td.textContent).join() === "2 / 5,47 / 50");
    // A concurrency limit next to a rate: listed with its cap, and the inspector shows
    // the requests in flight (here a check's lease, held until released).
    const exports = { endpoint: "/api/exports/*", limits: [
      { name: "hourly", requests_per_window: 10, window_seconds: 3600 },
      { name: "exports", algorithm: "concurrency", max_in_flight: 2 }] };
    const made = await fetch(url + "/admin/configs", { method: "POST",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(exports) });
    assert.equal(made.status, 201);
    await page.reload();
    await until(page, () => [...document.querySelectorAll("#config-rows td")].some((td) =>
      td.textContent === "hourly: 10 / 3600 s sliding_window; exports: 2 in flight concurrency"));
    const check = await fetch(url + "/v1/check", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ client_id: "exp", path: "/api/exports/a" }) });
    const { lease } = await check.json();
    assert.ok(lease);
    await page.fill("#inspector [name=client]", "exp");
    await page.press("#inspector [name=client]", "Enter");
    await until(page, () => [...document.querySelectorAll("#quota-rows td.remaining")].map((td) => td.textContent).join() ===
      "9 / 10,1 / 2 · 1 in flight");
    assert.deepEqual(await page.evaluate(() => [...document.querySelectorAll("#quota-rows td.endpoint")].map((td) => td.textContent)),
      ["/api/exports/* · hourly", "/api/exports/* · exports"]);
    // A limit of tokens: listed with its unit and where its cost comes from; once a
    // report overdraws it, the inspector shows the debt and when it is repaid.
    const llm = { endpoint: "/api/llm/*", limits: [
      { name: "tokens", unit: "tokens", algorithm: "fixed_window", requests_per_window: 1000, window_seconds: 60,
        cost_from: "response_header:X-Usage-Tokens" }] };
    const llmMade = await fetch(url + "/admin/configs", { method: "POST",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(llm) });
    assert.equal(llmMade.status, 201);
    await page.reload();
    await until(page, () => [...document.querySelectorAll("#config-rows td")].some((td) =>
      td.textContent === "tokens: 1,000 tokens / 60 s fixed_window (cost from X-Usage-Tokens)"));
    const reported = await fetch(url + "/v1/report", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ client_id: "llm", path: "/api/llm/chat", cost: 1400 }) });
    assert.equal(reported.status, 200);
    await page.fill("#inspector [name=client]", "llm");
    await page.press("#inspector [name=client]", "Enter");
    await until(page, () => [...document.querySelectorAll("#quota-rows td.remaining")].map((td) => td.textContent).join() ===
      "0 / 1,000 tokens");
    const resets = await page.evaluate(() => document.querySelector("#quota-rows td.resets").textContent);
    assert.match(resets, /^400 owed, repaid in \d+ s$/);
    assert.deepEqual(pageErrors, []);
  });
});

test("in reverse-proxy mode the tester fires at the upstream's paths", { timeout: 120_000 }, async () => {
  // The upstream counts what reaches it, by method and path.
  const reached = [];
  const upstream = createServer((req, res) => {
    reached.push(`${req.method} ${req.url}`);
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify({ upstream: true }));
  });
  await new Promise((r) => upstream.listen(0, "127.0.0.1", r));
  try {
    await withServer(["--upstream", `http://127.0.0.1:${upstream.address().port}`], "info", async ({ url, browser }) => {
      // A token bucket of 3 for the upstream's /shop/*: no window boundary to wait for.
      const created = await fetch(url + "/admin/configs", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ endpoint: "/shop/*", requests_per_window: 3, window_seconds: 3600, algorithm: "token_bucket" }),
      });
      assert.equal(created.status, 201);
      const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
      await page.goto(url + "/dashboard");
      await until(page, () => document.querySelector("#conn").textContent.trim() === "live");
      await page.selectOption("#tester [name=method]", "POST");
      await page.fill("#tester [name=path]", "/shop/cart");
      await page.fill("#tester [name=client]", "shopper");
      await page.fill("#tester [name=count]", "5");
      await page.click("#tester button[type=submit]");
      await page.locator("#tester-passed").waitFor({ timeout: WAIT });
      assert.equal(await page.textContent("#tester-passed"), "3");
      assert.equal(await page.textContent("#tester-limited"), "2");
      assert.deepEqual(reached.filter((r) => r.includes("/shop")), ["POST /shop/cart", "POST /shop/cart", "POST /shop/cart"],
                       "the allowed requests, and only they, reached the upstream");
      // The events say these decisions were for requests to the upstream.
      await until(page, () => [...document.querySelectorAll("#events li")].some((li) =>
        li.querySelector(".tag").textContent === "429" && li.querySelector(".ev-detail").textContent.endsWith("· via reverse proxy")));
    });
  } finally {
    upstream.close();
  }
});

test("shadow mode, overrides, history with rollback, top clients and a reset, from the dashboard", { timeout: 120_000 }, async () => {
  await withServer([], "info", async ({ url, browser }) => {
    const { page, pageErrors } = await openDashboard(browser, url);

    // ---- a shadow config with an override, made in the form ----
    // A token bucket: no window boundary for the counts below to straddle.
    await page.click("#new-config");
    await fillConfig(page, { endpoint: "/shadow/*", algorithm: "token_bucket", requests_per_window: "2", window_seconds: "3600",
                             mode: "shadow", overrides: '[{"client": "vip-*", "requests_per_window": 5}]' });
    await page.click("#config-save");
    const row = (ep) => `#config-rows tr:has(td.endpoint:text-is("${ep}"))`;
    await page.locator(row("/shadow/*")).waitFor({ timeout: WAIT });
    assert.equal(await page.textContent(`${row("/shadow/*")} td.mode`), "shadow");
    assert.equal(await page.textContent(`${row("/shadow/*")} td.overrides`), "vip-*: 5");

    // Shadow mode never refuses; the events say what would have been refused.
    const fire = async (client, count) => {
      await page.fill("#tester [name=path]", "/shadow/x");
      await page.fill("#tester [name=client]", client);
      await page.fill("#tester [name=count]", String(count));
      await page.evaluate(() => document.querySelector("#tester-result").replaceChildren());
      await page.click("#tester button[type=submit]");
      await page.locator("#tester-passed").waitFor({ timeout: WAIT });
      return [Number(await page.textContent("#tester-passed")), Number(await page.textContent("#tester-limited"))];
    };
    assert.deepEqual(await fire("plain", 4), [4, 0]);
    await until(page, () => [...document.querySelectorAll("#events .tag-shadow")].some((t) => t.textContent === "would 429"));

    // The override gives vip-1 its own limit, shown in the inspector.
    assert.deepEqual(await fire("vip-1", 3), [3, 0]);
    await page.fill("#inspector [name=client]", "vip-1");
    await page.click("#inspector button[type=submit]");
    await until(page, () => [...document.querySelectorAll("#quota-rows tr")].some((tr) =>
      tr.dataset.endpoint === "/shadow/*" && tr.querySelector(".limit-from").textContent === "override vip-* · shadow"
      && tr.querySelector(".remaining").textContent.trim() === "2 / 5"));

    // ---- enforced from the form, then rolled back to shadow from the history ----
    await page.click(`${row("/shadow/*")} button:text-is("Edit")`);
    await page.selectOption("#config-form [name=mode]", "enforce");
    await page.click("#config-save");
    await until(page, () => document.querySelector('#config-rows td.mode')?.closest("tbody")
      && [...document.querySelectorAll("#config-rows tr")].some((tr) =>
        tr.querySelector("td.endpoint")?.textContent === "/shadow/*" && tr.querySelector("td.mode").textContent === "enforce"));
    assert.deepEqual(await fire("plain", 2), [0, 2], "enforced: plain has used its 2");

    await page.click(`${row("/shadow/*")} button.history`);
    await until(page, () => document.querySelectorAll("#history-rows tr").length === 2);
    assert.equal(await page.textContent("#history-endpoint"), "/shadow/*");
    await page.click("#history-rows tr:nth-child(2) button.rollback");
    await until(page, () => [...document.querySelectorAll("#config-rows tr")].some((tr) =>
      tr.querySelector("td.endpoint")?.textContent === "/shadow/*" && tr.querySelector("td.mode").textContent === "shadow"));
    await until(page, () => document.querySelectorAll("#history-rows tr").length === 3
      && document.querySelector("#history-rows tr td:nth-child(4)").textContent === "rollback");

    // ---- top clients: plain leads by blocked (its two real 429s) ----
    await page.selectOption("#top-form [name=by]", "blocked");
    await page.selectOption("#top-form [name=window]", "15m");
    await until(page, () => document.querySelector("#top-rows li .client")?.textContent === "plain"
      && document.querySelector("#top-rows li .count").textContent === "2");

    // ---- reset: plain gets its quota back ----
    await page.fill("#inspector [name=client]", "plain");
    await page.click("#inspector button[type=submit]");
    await until(page, () => [...document.querySelectorAll("#quota-rows tr")].some((tr) =>
      tr.dataset.endpoint === "/shadow/*" && tr.querySelector(".remaining").textContent.trim().startsWith("0 /")));
    await page.click("#reset-client");
    await until(page, () => [...document.querySelectorAll("#events .ev-detail")].some((e) => e.textContent.startsWith("plain quota reset")));
    await until(page, () => [...document.querySelectorAll("#quota-rows tr")].some((tr) =>
      tr.dataset.endpoint === "/shadow/*" && tr.querySelector(".remaining").textContent.trim() === "2 / 2"));

    // ---- an Envoy descriptor rule: made in the form with no endpoint, edited, deleted ----
    const rule = "rw: generic_key=api, remote_address";
    await page.click("#new-config");
    await fillConfig(page, { endpoint: "", requests_per_window: "3", window_seconds: "60", domain: "rw",
                             descriptor: '[{"key": "generic_key", "value": "api"}, {"key": "remote_address"}]' });
    await page.click("#config-save");
    await page.locator(row(rule)).waitFor({ timeout: WAIT });
    await page.click(`${row(rule)} button:text-is("Edit")`);
    assert.equal(await page.inputValue("#config-form [name=domain]"), "rw");
    assert.deepEqual(JSON.parse(await page.inputValue("#config-form [name=descriptor]")),
      [{ key: "generic_key", value: "api" }, { key: "remote_address" }]);
    await page.fill("#config-form [name=requests_per_window]", "7");
    await page.click("#config-save");
    await until(page, () => [...document.querySelectorAll("#config-rows tr")].some((tr) =>
      tr.querySelector("td.endpoint")?.textContent === "rw: generic_key=api, remote_address"
      && tr.textContent.includes("7")));
    await page.click(`${row(rule)} button:text-is("Delete")`);
    await page.locator(row(rule)).waitFor({ state: "detached", timeout: WAIT });

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-operators.png"), fullPage: true });
    assert.deepEqual(pageErrors, [], "no uncaught error on the page");
  });
});

test("the page never shows stale state: a config made while it loads, a restart, honest colours, a clean load", { timeout: 120_000 }, async () => {
  await withServer([], "info", async ({ url, browser, server, dir }) => {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const problems = [];
    page.on("pageerror", (e) => problems.push(`page error: ${e}`));
    page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
    page.on("requestfailed", (r) => { if (!r.url().includes("/ws/")) problems.push(`failed: ${r.url()}`); });
    page.on("response", (r) => { if (r.status() >= 400) problems.push(`${r.status()}: ${r.url()}`); });
    const admin = (method, path, body) => fetch(url + path, {
      method, headers: { "Content-Type": "application/json" }, body: body && JSON.stringify(body),
    });

    // ---- a config created while the page loads appears without a reload ----
    const loading = page.goto(url + "/dashboard");
    const made = await admin("POST", "/admin/configs", { endpoint: "/during-load/*", requests_per_window: 11, window_seconds: 3600, algorithm: "fixed_window" });
    assert.equal(made.status, 201);
    await loading;
    const row = (ep) => `#config-rows tr:has(td.endpoint:text-is("${ep}"))`;
    await page.locator(row("/during-load/*")).waitFor({ timeout: WAIT });
    await until(page, () => document.querySelector("#conn").textContent.trim() === "live");

    // ---- the load itself: no console error, no failed request, nothing counted ----
    const stats = await (await admin("GET", "/admin/stats")).json();
    assert.equal(stats.total_requests_24h, 0, "loading the page is not traffic (no /favicon.ico)");
    assert.deepEqual(problems, [], "a clean load");
    const icon = await page.evaluate(() => document.querySelector("link[rel=icon]").href);
    assert.ok(icon.endsWith("/static/favicon.svg"), icon);

    // ---- the success rate's colour follows the figure ----
    const hit = async (n) => { for (let i = 0; i < n; i++) await fetch(url + "/during-load/x", { headers: { "X-Client-ID": "colours" } }); };
    await hit(11);
    await until(page, () => document.querySelector("#kpi-success").textContent === "100.0 %");
    assert.equal(await page.getAttribute("#kpi-success", "class"), "kpi-value good");
    await hit(9);
    await until(page, () => document.querySelector("#kpi-success").textContent === "55.0 %");
    assert.equal(await page.getAttribute("#kpi-success", "class"), "kpi-value bad");
    const colours = await page.evaluate(() => [...document.querySelectorAll("#kpi-success")].map((e) => getComputedStyle(e).color));
    assert.equal(colours[0], "rgb(209, 69, 59)", "red at 55 %");
    problems.length = 0;

    // ---- a restart under the open page: it says so, reconnects, and fetches again ----
    const port = new URL(url).port;
    await stopServer(server.child);
    await until(page, () => document.querySelector("#conn").textContent.trim() === "reconnecting…");
    // The new server starts with a config file: its configs differ from those shown.
    const file = join(dir, "configs.toml");
    writeFileSync(file, '[[config]]\nendpoint = "/after-restart/*"\nrequests_per_window = 3\nwindow_seconds = 60\n');
    const again = startServer(dir, ["--config-file", file], "info", `127.0.0.1:${port}`);
    server.child = again.child;
    await again.ready;
    await until(page, () => document.querySelector("#conn").textContent.trim() === "live");
    await page.locator(row("/after-restart/*")).waitFor({ timeout: WAIT });
    await page.locator(row("/during-load/*")).waitFor({ state: "detached", timeout: WAIT });
    const shown = problems.filter((p) => !p.startsWith("console:") && !p.startsWith("failed:"));
    assert.deepEqual(shown, [], "nothing but the feed's own reconnects failed");
  });
});

// Elements that stick out of their card sideways (a card is any .card or .kpi), an inner
// box that scrolls sideways, and the page scrolling sideways, as sentences; empty when
// the layout holds. Vertical scrolling lists (the events) are meant to scroll. Text for
// screen readers only (clipped to nothing, with clip-path) is not drawn and not checked.
function overflowing() {
  const drawn = (e) => { for (let a = e; a; a = a.parentElement) if (getComputedStyle(a).clipPath !== "none") return false; return true; };
  const name = (e) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") +
    (typeof e.className === "string" && e.className ? "." + e.className.trim().split(/\s+/).join(".") : "");
  const out = [];
  for (const card of document.querySelectorAll(".card, .kpi")) {
    const c = card.getBoundingClientRect();
    if (!c.width) continue;
    for (const e of card.querySelectorAll("*")) {
      const r = e.getBoundingClientRect();
      if (!r.width || !r.height || !drawn(e)) continue;
      if (r.left < c.left - 1 || r.right > c.right + 1) {
        out.push(`${name(e)} spans ${Math.round(r.left)}..${Math.round(r.right)}, outside ${name(card)} ${Math.round(c.left)}..${Math.round(c.right)}`);
      }
      if (e.scrollWidth > e.clientWidth + 1 && ["auto", "scroll"].includes(getComputedStyle(e).overflowX)) {
        out.push(`${name(e)} scrolls sideways (${e.scrollWidth} > ${e.clientWidth})`);
      }
    }
  }
  if (document.documentElement.scrollWidth > window.innerWidth + 1) out.push("the page scrolls sideways");
  return out;
}

// The chart's x-axis labels as drawn (uPlot paints them on a canvas): each label's left
// and right edge, measured with the axis's own font; overlapping neighbours, as sentences.
function overlappingLabels() {
  const axis = plot.axes[0];
  const ctx = document.createElement("canvas").getContext("2d");
  ctx.font = axis.font[0];
  const ratio = window.devicePixelRatio || 1;
  const boxes = [];
  axis._splits.forEach((v, i) => {
    if (axis._values[i] == null || axis._values[i] === "") return; // a tick left without a label
    const text = String(axis._values[i]).split("\n").reduce((a, b) => (a.length > b.length ? a : b));
    const w = ctx.measureText(text).width / ratio;
    const x = plot.valToPos(v, "x");
    boxes.push({ text, left: x - w / 2, right: x + w / 2 });
  });
  const out = [];
  for (let i = 1; i < boxes.length; i++) {
    if (boxes[i].left < boxes[i - 1].right + 4) out.push(`"${boxes[i - 1].text}" and "${boxes[i].text}" overlap`);
  }
  return { labels: boxes.length, out };
}

// Presses Tab (or `key`, e.g. Shift+Tab) until the focused element satisfies `is` (a
// predicate run in the page on document.activeElement); fails if it never does.
async function tabTo(page, is, what, key = "Tab") {
  for (let i = 0; i < 200; i++) {
    await page.keyboard.press(key);
    if (await page.evaluate(`(${is})(document.activeElement)`)) return;
  }
  throw new Error(`${what} cannot be reached with the Tab key`);
}

const AXE = join(ROOT, "tests/browser/node_modules/axe-core/axe.min.js");

// axe-core's WCAG 2.x A and AA rules and its best practices; the violations (and what
// it could not decide) as sentences naming the rule and the elements.
async function axeViolations(page) {
  // Evaluated through the DevTools protocol: a script tag would be refused by the page's
  // Content-Security-Policy, which stays in force for everything else.
  if (!(await page.evaluate(() => typeof window.axe !== "undefined"))) await page.evaluate(readFileSync(AXE, "utf8"));
  const result = await page.evaluate(() => window.axe.run(document, {
    runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"] },
  }));
  // What axe could not decide counts too, but for text inside a scrolled box (the event
  // list) whose background it cannot see: that text has the box's own background.
  const undecided = result.incomplete.map((v) => ({ ...v, nodes: v.nodes.filter((n) =>
    !(v.id === "color-contrast" && n.any.every((c) => /partially obscured/.test(c.message)))) }))
    .filter((v) => v.nodes.length);
  return [...result.violations, ...undecided].map((v) => `${v.id} (${v.impact}): ${v.help}: ` +
    v.nodes.slice(0, 5).map((n) => n.target.join(" ") + (n.failureSummary ? ` [${n.failureSummary.replace(/\s+/g, " ")}]` : "")).join("; "));
}

test("every card fits at 1400, 961, 800 and 420 px, axe finds nothing, and the keyboard alone runs it", { timeout: 180_000 }, async () => {
  await withServer([], "info", async ({ url, browser }) => {
    const admin = async (method, path, body) => {
      const r = await fetch(url + path, { method, headers: { "Content-Type": "application/json" }, body: body && JSON.stringify(body) });
      assert.ok(r.ok, `${method} ${path}: ${r.status} ${await r.text()}`);
      return r;
    };
    // Every kind of config the server has: one with an override, one in shadow mode (with
    // overrides enough to wrap), and an Envoy descriptor rule.
    await admin("POST", "/admin/configs", { endpoint: "/api/*", requests_per_window: 3, window_seconds: 3600, algorithm: "token_bucket",
                                            overrides: [{ client: "vip-*", requests_per_window: 50 }] });
    await admin("POST", "/admin/configs", { endpoint: "/shadow/*", requests_per_window: 1, window_seconds: 3600, algorithm: "token_bucket", mode: "shadow",
                                            overrides: ["gold-tier-*", "silver-tier-*", "bronze-tier-*", "partner-integration-*"]
                                              .map((client, i) => ({ client, requests_per_window: 100 * (4 - i) })) });
    await admin("POST", "/admin/configs", { domain: "edge", descriptor: [{ key: "generic_key", value: "api" }, { key: "remote_address" }],
                                            requests_per_window: 2, window_seconds: 60, algorithm: "fixed_window" });
    await admin("PUT", "/admin/configs/api/*", { requests_per_window: 4 });

    const { page, pageErrors } = await openDashboard(browser, url);

    // Traffic of every kind: routes (allowed, refused, let through in shadow), the decision
    // API and Envoy's protocol, all shown in the events.
    for (let i = 0; i < 6; i++) await fetch(url + "/api/data", { headers: { "X-Client-ID": "crowd" } });
    for (let i = 0; i < 2; i++) await fetch(url + "/shadow/x", { headers: { "X-Client-ID": "crowd" } });
    await admin("POST", "/v1/check", { client_id: "program", path: "/api/report", method: "GET" });
    await admin("POST", "/v1/envoy/json", { domain: "edge", descriptors: [{ entries: [
      { key: "generic_key", value: "api" }, { key: "remote_address", value: "10.0.0.7" }] }] });
    const eventTexts = () => [...document.querySelectorAll("#events li")].map((li) => li.textContent);
    // Each says who asked: the program through /v1/check, Envoy for its descriptor.
    await until(page, () => [...document.querySelectorAll("#events li")].some((li) => li.textContent.includes("program /api/report (/api/*) · 3/4 left · via /v1/check")));
    await until(page, () => [...document.querySelectorAll("#events li")].some((li) => /^10\.0\.0\.7 edge: .* · 1\/2 left · via Envoy$/.test(li.querySelector(".ev-detail").textContent)));
    // The "from" switch narrows the list to one asker, the lines shown already included;
    // what arrives meanwhile is shown once the switch is back to anyone.
    const lines = () => [...document.querySelectorAll("#events li")].map((li) => li.textContent);
    await page.selectOption("#events-via", "envoy");
    const envoyOnly = await page.evaluate(lines);
    assert.ok(envoyOnly.length === 1 && envoyOnly[0].includes("via Envoy"), envoyOnly.join("\n"));
    await fetch(url + "/api/data", { headers: { "X-Client-ID": "meanwhile" } });
    await until(page, () => recent.some((m) => m.client_id === "meanwhile"));
    assert.equal((await page.evaluate(lines)).length, 1, "a route's event is not shown under from: Envoy");
    await page.selectOption("#events-via", "route");
    const routesOnly = await page.evaluate(lines);
    assert.ok(routesOnly.length === 9 && routesOnly.every((t) => /crowd|meanwhile/.test(t) && !t.includes(" via ")), routesOnly.join("\n"));
    await page.selectOption("#events-via", "");
    assert.ok((await page.evaluate(lines)).some((t) => t.includes("meanwhile /api/data")), "nothing missing after the switch");
    // Colour is never the only signal: a refusal says 429 in words, a shadow one "would 429".
    const texts = await page.evaluate(eventTexts);
    const refused = await page.evaluate(() => [...document.querySelectorAll("#events li")]
      .filter((li) => getComputedStyle(li.querySelector(".tag")).color === getComputedStyle(document.querySelector(".kpi-value.bad")).color)
      .map((li) => li.querySelector(".tag").textContent));
    assert.ok(refused.length > 0 && refused.every((t) => /429|drop/.test(t)), `red events say why: ${refused}`);
    assert.ok(texts.some((t) => t.includes("would 429")), texts.join("\n"));

    // Open every card that can be opened: the inspector on a client, the top list, a
    // config's history, and the config form.
    await page.fill("#inspector [name=client]", "crowd");
    await page.click("#inspector button[type=submit]");
    await until(page, () => document.querySelectorAll("#quota-rows tr").length >= 2);
    await until(page, () => document.querySelectorAll("#top-rows li").length > 0);
    await page.click('#config-rows tr:has(td.endpoint:text-is("/api/*")) button.history');
    await until(page, () => document.querySelectorAll("#history-rows tr").length === 2);
    await page.click("#new-config");
    await until(page, () => document.querySelectorAll("#config-rows tr").length === 4);

    mkdirSync(ARTIFACTS, { recursive: true });
    // 961: the narrowest width with tables drawn as tables.
    for (const width of [1400, 961, 800, 420]) {
      await page.setViewportSize({ width, height: 900 });
      await until(page, (w) => window.innerWidth === w, width);
      // Waited for, not sampled: the chart follows its box through a ResizeObserver.
      // Polled with a function: a string would be evaluated by the page, which its
      // Content-Security-Policy refuses (no 'unsafe-eval').
      await page.evaluate(`window.overflowing = ${overflowing}`);
      await until(page, () => window.overflowing().length === 0).catch(async (e) => {
        const found = await page.evaluate(`(${overflowing})()`);
        throw new Error(`at ${width} px (${e.message.split("\n")[0]}):\n${found.join("\n")}`, { cause: e });
      });
      await until(page, () => plot && plot.axes[0]._splits && plot.axes[0]._splits.length > 1).catch(async (e) => {
        const seen = await page.evaluate(() => JSON.stringify([plot?.width, plot?.axes[0]._splits, plot?.axes[0]._values, plot?.data[0]]));
        throw new Error(`the chart at ${width} px: ${seen}`, { cause: e });
      });
      // The inspector's quota bars keep a width one can read, never a dot.
      const bars = await page.evaluate(() => [...document.querySelectorAll("#quota-rows .bar")].map((b) => b.getBoundingClientRect().width));
      assert.ok(bars.length >= 2 && bars.every((w) => w >= 100), `quota bars at ${width} px: ${bars}`);
      const labels = await page.evaluate(`(${overlappingLabels})()`);
      assert.deepEqual(labels.out, [], `the chart's x labels at ${width} px`);
      await page.evaluate(() => window.scrollTo(0, 0));
      await page.screenshot({ path: join(ARTIFACTS, `dashboard-${width}.png`), fullPage: true });
      assert.deepEqual(await axeViolations(page), [], `axe-core at ${width} px`);
    }

    // ---- the keyboard alone: create, edit, leave with Escape, fire, delete ----
    await page.setViewportSize({ width: 1400, height: 900 });
    await page.goto(url + "/dashboard");
    await until(page, () => document.querySelector("#conn").textContent.trim() === "live");
    await tabTo(page, (e) => e.id === "new-config", "the New config button");
    assert.notEqual(await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle), "none", "focus is visible");
    await page.keyboard.press("Enter");
    assert.equal(await page.evaluate(() => document.activeElement.name), "endpoint", "the form takes the focus");
    await page.keyboard.type("/kbd/*");
    await tabTo(page, (e) => e.name === "requests_per_window", "the limit field");
    await page.keyboard.press("Control+A");
    await page.keyboard.type("2");
    await page.keyboard.press("Enter");
    const row = (ep) => `#config-rows tr:has(td.endpoint:text-is("${ep}"))`;
    await page.locator(row("/kbd/*")).waitFor({ timeout: WAIT });
    assert.equal(await page.textContent(`${row("/kbd/*")} td:nth-child(3)`), "2");
    assert.equal(await page.evaluate(() => document.activeElement.id), "new-config", "the focus comes back after a create");

    const inKbdRow = (role) => `(e) => e.dataset.role === ${JSON.stringify(role)} &&
      e.closest("tr")?.querySelector("td.endpoint")?.textContent === "/kbd/*"`;
    const focusedIn = () => page.evaluate(() => [document.activeElement.dataset.role, document.activeElement.closest("tr")?.dataset.key]);
    await tabTo(page, inKbdRow("edit"), "the row's Edit button");
    assert.equal(await page.evaluate(() => document.activeElement.getAttribute("aria-label")), "Edit /kbd/*", "the button says which row");
    await page.keyboard.press("Enter");
    assert.equal(await page.evaluate(() => document.activeElement.name), "requests_per_window", "editing starts at the first field that can change (the endpoint cannot)");
    await page.keyboard.press("Control+A");
    await page.keyboard.type("3");
    await page.keyboard.press("Enter");
    await until(page, () => [...document.querySelectorAll("#config-rows tr")].some((tr) => tr.dataset.key === "/kbd/*" && tr.children[2].textContent === "3"));
    // The rows were drawn anew; the focus is on the new row's Edit button.
    await until(page, () => document.activeElement.dataset.role === "edit" && document.activeElement.isConnected
      && document.activeElement.closest("tr").dataset.key === "/kbd/*");
    await page.keyboard.press("Enter");
    await page.keyboard.press("Escape");
    assert.ok(await page.isHidden("#config-form"), "Escape closes the form");
    assert.deepEqual(await focusedIn(), ["edit", "/kbd/*"], "and the focus goes back to the Edit button");

    // The tester is above the configs: backwards.
    await tabTo(page, (e) => e.name === "path" && e.closest("#tester"), "the tester's path", "Shift+Tab");
    await page.keyboard.press("Control+A");
    await page.keyboard.type("/kbd/x");
    await tabTo(page, (e) => e.name === "count" && e.closest("#tester"), "the tester's count");
    await page.keyboard.press("Control+A");
    await page.keyboard.type("5");
    await page.keyboard.press("Enter");
    await page.locator("#tester-limited").waitFor({ timeout: WAIT });
    assert.equal(await page.textContent("#tester-passed"), "3");
    assert.equal(await page.textContent("#tester-limited"), "2");

    await tabTo(page, inKbdRow("delete"), "the row's Delete button");
    await page.keyboard.press("Enter"); // the confirmation is accepted by the dialog handler
    await page.locator(row("/kbd/*")).waitFor({ state: "detached", timeout: WAIT });
    await until(page, () => document.activeElement.id === "new-config");
    assert.deepEqual(pageErrors, [], "no uncaught error on the page");
  });
});
