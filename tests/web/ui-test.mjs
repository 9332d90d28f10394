// Drives headless Chromium (the Debian package, through playwright-core) against a running
// weir job's web UI:
//
//   node tests/web/ui-test.mjs URL SCREENSHOT.png STEP...
//
// Loads the page, finds every STEP in the job graph, sees a row count increase between two
// reads, opens the checkpoint table (waits for a row in it), and saves a screenshot. Prints
// one line per check; exits non-zero on the first failure.
import { chromium } from "playwright-core";

const [url, shot, ...steps] = process.argv.slice(2);
if (!url || !shot || steps.length === 0) {
  console.error("usage: ui-test.mjs URL SCREENSHOT.png STEP...");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const userDataDir = process.env.CHROMIUM_PROFILE;

function fail(msg) {
  console.error("FAIL: " + msg);
  process.exitCode = 1;
  throw new Error(msg);
}

const parseRows = (t) => {
  const m = /^([\d.]+)([kMG]?)$/.exec((t || "").trim());
  if (!m) return NaN;
  return parseFloat(m[1]) * ({ "": 1, k: 1e3, M: 1e6, G: 1e9 })[m[2]];
};

// Flags Chromium needs on these machines (see the project's STACK notes): no sandbox as root,
// no GPU, and no background networking (its connections are refused here).
const args = [
  "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-dev-shm-usage",
];
const browser = userDataDir
  ? await chromium.launchPersistentContext(userDataDir, { executablePath, args, headless: true, viewport: { width: 1400, height: 900 } })
  : await chromium.launch({ executablePath, args, headless: true });
try {
  const page = userDataDir ? browser.pages()[0] || await browser.newPage() : await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await page.goto(url, { waitUntil: "domcontentloaded", timeout: 30000 });

  for (const s of steps) {
    const node = page.locator(`g.node[data-step="${s}"]`);
    if ((await node.count()) !== 1) fail(`step ${s} is not drawn in the graph`);
  }
  console.log(`ok: graph shows ${steps.length} steps`);

  // The first step's rows, read from its row of the step table, twice.
  const first = steps[0];
  const cellOf = page.locator(`#steps tbody tr[data-step="${first}"] td.rows-out`);
  await cellOf.waitFor({ timeout: 15000 });
  const read = async () => parseRows(await cellOf.textContent());
  let a = await read();
  const deadline = Date.now() + 20000;
  let b = a;
  while (!(b > a) && Date.now() < deadline) {
    await page.waitForTimeout(500);
    b = await read();
  }
  if (!(b > a)) fail(`the row count of ${first} did not increase (${a} then ${b})`);
  console.log(`ok: ${first} rows out ${a} -> ${b}`);
  // The graph box shows a live rate and the box is coloured.
  const rate = await page.locator(`g.node[data-step="${first}"] text.rate`).textContent();
  if (!/rows\/s/.test(rate || "")) fail(`no rate in the graph box of ${first}: ${rate}`);
  console.log(`ok: graph box of ${first} says "${rate}"`);

  // Open the checkpoint table.
  await page.click("#open-checkpoints");
  const rows = page.locator("#checkpoints tbody tr");
  await rows.first().waitFor({ state: "visible", timeout: 30000 }).catch(() => fail("the checkpoint table shows no checkpoint"));
  const first_row = await rows.first().innerText();
  console.log(`ok: checkpoint table opened, newest: ${first_row.replace(/\s+/g, " ")}`);
  if ((await page.locator("#checkpoint-chart rect").count()) < 1) fail("the checkpoint chart has no bar");
  console.log("ok: checkpoint chart drawn");

  // Back to the graph, open a step's subtasks, and take the screenshot there.
  await page.click('button[data-tab="graph-tab"]');
  await page.locator(`g.node[data-step="${steps[Math.min(1, steps.length - 1)]}"]`).click();
  await page.locator("#subtasks tbody tr").first().waitFor({ timeout: 10000 }).catch(() => fail("no subtask rows"));
  console.log("ok: subtasks shown");
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`ok: screenshot ${shot}`);
  if (errors.length) fail("the page logged errors: " + errors.join("; "));
} finally {
  await browser.close();
}
