// Completes the issuer's device code page over HTTP, as a person in a browser would:
// GET /devicelogin, POST the user code, then POST the sign-in form (or its Cancel button).
// Shared by the device code tests, the msal-node device code test and the agent CLI tests.
import { request } from './harness.mjs';

const unescape = (s) => s.replace(/&(amp|lt|gt|quot|#39);/g,
  (_, e) => ({ amp: '&', lt: '<', gt: '>', quot: '"', '#39': "'" })[e]);

/** The hidden inputs of a page, as an object. */
export function hiddenFields(html) {
  const out = {};
  for (const m of html.matchAll(/<input type="hidden" name="([^"]*)" value="([^"]*)">/g))
    out[unescape(m[1])] = unescape(m[2]);
  return out;
}

/** The error a page shows (its role="alert" box), or null. */
export function pageError(html) {
  const m = /<div class="err" role="alert">([^<]*)<\/div>/.exec(html);
  return m ? unescape(m[1]) : null;
}

function postPage(url, fields, ca) {
  return request(url, {
    method: 'POST', ca, body: new URLSearchParams(fields).toString(),
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
  });
}

/**
 * Enter userCode on the issuer's /devicelogin page and sign in as username/password, or with
 * deny: true press Cancel instead. baseUrl is the issuer's URL (or the verification_uri itself);
 * ca its CA certificate (omit it when NODE_EXTRA_CA_CERTS already trusts it).
 * Resolves to { ok, status, text, error }: ok when the last page says the person signed in
 * (or, with deny, declined); error is the page's error message, if it shows one.
 */
export async function completeDeviceLogin({ baseUrl, userCode, username, password, ca, deny = false }) {
  const url = baseUrl.endsWith('/devicelogin') ? baseUrl : `${baseUrl.replace(/\/$/, '')}/devicelogin`;
  const first = await request(url, { ca });
  if (first.status !== 200 || !/id="otc"/.test(first.text))
    throw new Error(`GET ${url}: ${first.status}, no code form`);
  const signIn = await postPage(url, { otc: userCode }, ca);
  const hidden = hiddenFields(signIn.text);
  if (signIn.status !== 200 || !hidden.flow || !/id="login"/.test(signIn.text))
    return { ok: false, status: signIn.status, text: signIn.text, error: pageError(signIn.text) };
  const last = await postPage(url, deny ? { ...hidden, deny: '1' } : { ...hidden, login: username, passwd: password }, ca);
  const done = deny ? /You have declined to sign in/ : /You have signed in to the .* application on your device/;
  return { ok: last.status === 200 && done.test(last.text), status: last.status, text: last.text, error: pageError(last.text) };
}
