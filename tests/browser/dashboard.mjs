// Drives two node dashboards in Debian's Chromium, headless, as an admin
// would: reads the header, has an action refused, stops the Active node's
// services in manual mode and watches both pages follow without a reload.
// Run by crates/resilience/tests/dashboard_e2e.rs with MAIN_URL,
// STANDBY_URL, TOKEN and ARTIFACTS set; exits non-zero on the first failed
// check, saying which.
import { chromium } from "playwright-core";

const { MAIN_URL, STANDBY_URL, TOKEN, ARTIFACTS, MAIN_PID } = process.env;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const WAIT = 15000;

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
let failed = false;
const pages = {};
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1100 } });
  for (const [name, url] of [["main", MAIN_URL], ["standby", STANDBY_URL]]) {
    const page = await context.newPage();
    // Stop services asks for confirmation: the admin says yes.
    page.on("dialog", (d) => d.accept());
    page.on("pageerror", (e) => {
      console.log(`${name}: page error: ${e.message}`);
      failed = true;
    });
    await page.goto(url);
    // A flag that a reload would wipe: the pages must update in place.
    await page.evaluate(() => (window.__noReload = true));
    pages[name] = page;
  }
  const { main, standby } = pages;
  const text = (page, sel) => page.locator(sel).innerText();
  const waitText = (page, sel, re, what) =>
    page
      .waitForFunction(
        ([sel, src]) => new RegExp(src).test(document.querySelector(sel)?.textContent || ""),
        [sel, re.source],
        { timeout: WAIT }
      )
      .then(
        () => check(true, what),
        async () => check(false, `${what} (got "${await text(page, sel)}")`)
      );

  // The header: node type, mode and status.
  await waitText(main, "#node-type", /^Main$/, "main page shows node type Main");
  await waitText(main, "#node-mode", /^Manual$/, "main page shows manual mode");
  await waitText(main, "#node-status", /^Active/, "main page shows Active");
  await waitText(standby, "#node-type", /^Standby$/, "standby page shows node type Standby");
  await waitText(standby, "#node-status", /^Inactive/, "standby page shows Inactive");
  await waitText(standby, "#peer", /status\s*active/, "standby page shows its peer active");

  // An action without a token asks for it; a refused action says why.
  await standby.click("#btn-start");
  await waitText(standby, "#action-result", /enter the API token/, "an action without a token asks for it");
  await standby.fill("#token", TOKEN);
  await standby.click("#token-form button[type=submit]");
  await standby.click("#btn-start");
  await waitText(standby, "#action-result", /refused: .*peer.*active/i, "starting beside an active peer is refused with its reason");
  await standby.screenshot({ path: `${ARTIFACTS}/dashboard-refused.png`, fullPage: true });
  // The switchover button reaches the API; in manual mode it is refused with its reason.
  await standby.click("#btn-switchover");
  await waitText(standby, "#action-result", /Switch over refused: manual mode/, "switchover in manual mode is refused with its reason");

  // A wrong token is told apart from a refusal.
  await main.fill("#token", "not-the-token");
  await main.click("#token-form button[type=submit]");
  await main.click("#btn-stop");
  await waitText(main, "#action-result", /token refused/, "a wrong token is reported as such");

  // Stop services on the Active Main: both pages follow, without a reload.
  await main.fill("#token", TOKEN);
  await main.click("#token-form button[type=submit]");
  await main.click("#btn-stop");
  await waitText(main, "#action-result", /Stop services: .*accepted/, "stop accepted");
  await waitText(main, "#node-status", /^Inactive/, "main page shows Inactive after Stop services");
  await waitText(standby, "#peer", /status\s*inactive/, "standby page shows its peer inactive");
  await waitText(main, "#events", /Updating resilience state, from: True to: False/, "the event history shows the change");
  // One line for the transition: its steps are folded beneath the change.
  await waitText(main, "#events tr.transition summary", /^Active → Inactive: Updating resilience state, from: True to: False/, "the stop is one line, headed by the change of state");
  const visible = await main.locator("#events").innerText();
  check(!/status active -> stopping/.test(visible), "the transition's steps are folded, not one line each");
  check((visible.match(/from: True to: False/g) || []).length === 1, "the change of state appears once");
  for (const [name, page] of Object.entries(pages)) {
    check(await page.evaluate(() => window.__noReload === true), `${name} page was not reloaded`);
  }
  // The main's own row (drawn at y=6) shows the time it served: the
  // timeline reads each event's typed state, not its text (which ends with a reason).
  await main.waitForSelector('#timeline rect.active[y="6"]', { state: "attached", timeout: 15000 });
  check((await main.locator("#timeline rect").count()) >= 2, "the timeline draws both rows");
  // Colours per state: the Main's row is green while it served, grey since
  // it stopped (the legend's colours), not one colour for every segment.
  await main.waitForSelector('#timeline rect.inactive[y="6"]', { state: "attached", timeout: 15000 });
  const fills = await main.evaluate(() =>
    Object.fromEntries(
      ["active", "inactive"].map((c) => [c, getComputedStyle(document.querySelector(`#timeline rect.${c}[y="6"]`)).fill])
    )
  );
  check(fills.active === "rgb(31, 138, 76)", `the Main's active time is green (${fills.active})`);
  check(fills.inactive === "rgb(195, 200, 210)", `the Main's inactive time is grey (${fills.inactive})`);
  await main.screenshot({ path: `${ARTIFACTS}/dashboard-main.png`, fullPage: true });

  // The Main dies (SIGKILL of the pid the test started): its page no longer
  // shows a status it cannot vouch for, and the Standby's shows what the
  // Main last said, as such, not as what it says now.
  process.kill(Number(MAIN_PID), "SIGKILL");
  await waitText(main, "#node-status", /^Unreachable$/, "a dead node's page drops its status badge");
  await waitText(standby, "#peer", /status\s*last known: inactive \(/, "a silent peer shows its last known status and when");
  await standby.screenshot({ path: `${ARTIFACTS}/dashboard-peer-silent.png`, fullPage: true });
  console.log(`screenshots in ${ARTIFACTS}`);
} catch (e) {
  console.log(e.message);
  failed = true;
  for (const [name, page] of Object.entries(pages)) {
    await page.screenshot({ path: `${ARTIFACTS}/dashboard-${name}-failed.png`, fullPage: true }).catch(() => {});
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
