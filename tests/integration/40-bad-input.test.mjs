// Bad input on the token endpoint: malformed bodies, wrong methods and types, missing or wrong
// parameters and credentials, forged assertions — each refused with Entra's status and code —
// and a burst of garbage after which the issuer still serves and exits cleanly.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import tls from 'node:tls';
import https from 'node:https';
import { initDirectory, startIssuer, demo, request } from './harness.mjs';
import {
  TOKEN_EXCHANGE_SCOPE, blueprintCredential, certAssertion, assertionFields, signJwt, strangerKey,
  token as post, ok, refused, now,
} from './tokens.mjs';

let dir, iss, d, cred, ca, stopped = false;
const tok = (fields, headers) => post(iss, ca, fields, headers);
const apiScope = (p) => `${d.api.identifier_uris[0]}/${p}`;
/** POST a raw body with the given Content-Type. */
const raw = (body, type = 'application/x-www-form-urlencoded', extra = {}) =>
  request(iss.tokenUrl, { method: 'POST', ca, body, headers: type ? { 'Content-Type': type, ...extra } : extra });

before(async () => {
  dir = initDirectory();
  d = demo(dir.json());
  ca = dir.ca;
  cred = blueprintCredential(dir);
  iss = await startIssuer(dir);
});
after(async () => {
  if (!stopped) assert.equal(await iss.stop(), 0, 'clean exit (no leaks under ASan)');
  dir.cleanup();
});

const good = () => ({
  grant_type: 'client_credentials', client_id: d.blueprint.app_id, client_secret: d.blueprint.secrets[0],
  scope: apiScope('.default'),
});
const goodBody = () => new URLSearchParams(good()).toString();
/** Client credentials for the blueprint with this client assertion. */
const withAssertion = (assertion) => tok({
  grant_type: 'client_credentials', client_id: d.blueprint.app_id, scope: apiScope('.default'),
  ...assertionFields(assertion),
});

describe('malformed bodies', () => {
  test('the well-formed body these tests break is accepted', async () => {
    ok(await raw(goodBody()));
  });

  test('a bad %-escape is 900144', async () => {
    for (const tail of ['&x=%zz', '&x=%4', '&x=%', '&%G1=1'])
      refused(await raw(goodBody() + tail), 400, 'invalid_request', 900144);
  });

  test('NUL, escaped or raw, is 900144', async () => {
    refused(await raw(`${goodBody()}&x=a%00b`), 400, 'invalid_request', 900144);
    refused(await raw(`${goodBody()}&x=a\0b`), 400, 'invalid_request', 900144);
    refused(await raw(goodBody().replace('client_credentials', 'client_credentials%00')), 400, 'invalid_request', 900144);
  });

  test('more than 64 distinct fields is 900144; 64 are fine', async () => {
    const pad = (n) => Array.from({ length: n }, (_, i) => `x${i}=1`).join('&');
    ok(await raw(`${goodBody()}&${pad(64 - 4)}`));
    refused(await raw(`${goodBody()}&${pad(64 - 4 + 1)}`), 400, 'invalid_request', 900144);
    // repeated names count once (the first value wins)
    ok(await raw(`${goodBody()}&${Array.from({ length: 200 }, () => 'x=1').join('&')}`));
    ok(await raw(`${goodBody()}&grant_type=password`));
  });

  test('a body over 256 KiB is 413 (announced length and chunked)', async () => {
    const big = `${goodBody()}&pad=${'a'.repeat(300 * 1024)}`;
    const r = await raw(big);
    assert.equal(r.status, 413);
    assert.equal(r.json.error, 'request_too_large');
    const chunked = await new Promise((resolve, reject) => {
      const req = https.request(iss.tokenUrl, {
        method: 'POST', ca, agent: false,
        headers: { 'Content-Type': 'application/x-www-form-urlencoded', 'Transfer-Encoding': 'chunked' },
      }, (res) => {
        let t = '';
        res.on('data', (c) => { t += c; });
        res.on('end', () => resolve({ status: res.statusCode, json: JSON.parse(t) }));
      });
      req.on('error', reject);
      for (let i = 0; i < 30; i++) req.write('a'.repeat(10 * 1024));
      req.end();
    });
    assert.equal(chunked.status, 413);
    assert.equal(chunked.json.error, 'request_too_large');
    // just under the cap is parsed (and refused for what it says, not for its size)
    const under = `${goodBody()}&pad=${'a'.repeat(250 * 1024)}`;
    ok(await raw(under));
  });

  test('an empty body is 900144 (grant_type)', async () => {
    refused(await raw(''), 400, 'invalid_request', 900144, { match: /'grant_type'/ });
  });
});

describe('method and content type', () => {
  test('GET on the token endpoint is 405 with Allow: POST', async () => {
    const r = await request(`${iss.tokenUrl}?${goodBody()}`, { ca });
    refused(r, 405, 'invalid_request', 900561);
    assert.equal(r.headers.allow, 'POST');
    refused(await request(iss.tokenUrl, { method: 'PUT', ca, body: goodBody(),
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' } }), 405, 'invalid_request', 900561);
  });

  test('a JSON body, no Content-Type, or a look-alike type is 900144', async () => {
    refused(await raw(JSON.stringify(good()), 'application/json'), 400, 'invalid_request', 900144);
    refused(await raw(goodBody(), 'text/plain'), 400, 'invalid_request', 900144);
    refused(await raw(goodBody(), null), 400, 'invalid_request', 900144);
    refused(await raw(goodBody(), 'application/x-www-form-urlencodedX'), 400, 'invalid_request', 900144);
    refused(await raw(goodBody(), 'multipart/form-data; boundary=x'), 400, 'invalid_request', 900144);
  });

  test('the form type with parameters or in another case is accepted', async () => {
    ok(await raw(goodBody(), 'application/x-www-form-urlencoded; charset=UTF-8'));
    ok(await raw(goodBody(), 'Application/X-WWW-Form-Urlencoded'));
    ok(await raw(goodBody(), 'application/x-www-form-urlencoded;charset=utf-8'));
  });

  test('an unknown tenant on the token endpoint is 90002', async () => {
    for (const t of ['nope', '00000000-0000-0000-0000-000000000001', 'other.example'])
      refused(await post({ tokenUrl: `${iss.url}/${t}/oauth2/v2.0/token` }, ca, good()),
        400, 'invalid_request', 90002, { match: new RegExp(`Tenant '${t}' not found`) });
  });
});

describe('parameters and credentials', () => {
  test('an unknown grant type is 70003 unsupported_grant_type', async () => {
    for (const g of ['authorization_codez', 'urn:ietf:params:oauth:grant-type:saml2-bearer', 'CLIENT_CREDENTIALS'])
      refused(await tok({ ...good(), grant_type: g }), 400, 'unsupported_grant_type', 70003);
  });

  test('missing grant_type, client_id or scope is 900144 naming the parameter', async () => {
    for (const name of ['grant_type', 'client_id', 'scope']) {
      const f = good();
      delete f[name];
      refused(await tok(f), 400, 'invalid_request', 900144, { match: new RegExp(`'${name}'`) });
      refused(await tok({ ...f, [name]: '' }), 400, 'invalid_request', 900144, { match: new RegExp(`'${name}'`) });
    }
  });

  test('an unknown client is 700016 (app names are not client ids)', async () => {
    for (const id of ['0d0d0d0d-0000-4000-8000-000000000000', 'Weather Agent Blueprint', 'not-a-guid'])
      refused(await tok({ ...good(), client_id: id }), 400, 'unauthorized_client', 700016);
  });

  test('bytes that are not UTF-8, quoted back in an error, still give Entra\'s JSON (not a 500)', async () => {
    const body = (f) => Object.entries(f).map(([k, v]) => `${k}=${v}`).join('&');
    const g = { ...good(), client_secret: 'x' };
    refused(await raw(body({ ...g, client_id: '%FF' })), 400, 'unauthorized_client', 700016,
      { match: /identifier '\?'/ });
    refused(await raw(body({ ...g, grant_type: 'x%C3%28' })), 400, 'unsupported_grant_type', 70003,
      { match: /'x\?\('/ });
    refused(await raw(body({ ...good(), scope: '%ED%A0%80/.default' })), 400, 'invalid_resource', 500011);
    refused(await raw(body({ ...good(), scope: TOKEN_EXCHANGE_SCOPE, fmi_path: '%F5%80%80%80' })),
      400, 'unauthorized_client', 700016);
    refused(await post({ tokenUrl: `${iss.url}/%C0%AF/oauth2/v2.0/token` }, ca, good()), 400, 'invalid_request', 90002);
    // a two-byte character cut in half where the message is truncated (1 KiB)
    const r = refused(await raw(body({ ...g, client_id: `a${'%C3%A9'.repeat(600)}` })), 400, 'unauthorized_client', 700016);
    assert.ok(!r.error_description.includes('\ufffd'));
  });

  test('a wrong secret is 7000215 (401)', async () => {
    refused(await tok({ ...good(), client_secret: 'wrong' }), 401, 'invalid_client', 7000215);
    refused(await tok({ ...good(), client_secret: `${d.blueprint.secrets[0]}x` }), 401, 'invalid_client', 7000215);
    refused(await tok({ ...good(), client_secret: d.api.secrets[0] }), 401, 'invalid_client', 7000215);
  });

  test('no credential is 7000218', async () => {
    const f = good();
    delete f.client_secret;
    refused(await tok(f), 401, 'invalid_client', 7000218);
    // a public client still needs a credential for client_credentials
    refused(await tok({ ...f, client_id: d.cli.app_id }), 401, 'invalid_client', 7000218);
  });

  test('client credentials with a non-.default scope is 1002012', async () => {
    refused(await tok({ ...good(), scope: apiScope('Weather.Read') }), 400, 'invalid_scope', 1002012);
  });

  test('an unknown resource is 500011', async () => {
    refused(await tok({ ...good(), scope: 'api://nope/.default' }), 400, 'invalid_resource', 500011);
    refused(await tok({ ...good(), scope: '0e0e0e0e-0000-4000-8000-000000000000/.default' }),
      400, 'invalid_resource', 500011);
  });

  test('scopes of two resources are 28000', async () => {
    refused(await tok({ ...good(), scope: `${apiScope('.default')} ${TOKEN_EXCHANGE_SCOPE}` }),
      400, 'invalid_scope', 28000);
  });

  test('an unknown scope in a delegated flow is 70011', async () => {
    refused(await tok({
      grant_type: 'password', client_id: d.cli.app_id, username: d.alice.user_principal_name,
      password: d.alice.password, scope: `api://${d.blueprint.app_id}/Nope.Nope`,
    }), 400, 'invalid_scope', 70011);
  });

  test('a wrong password is 50126, for an unknown user too', async () => {
    for (const username of [d.alice.user_principal_name, 'nobody@agentid.local', d.agentUser.user_principal_name])
      refused(await tok({
        grant_type: 'password', client_id: d.cli.app_id, username, password: 'wrong',
        scope: `api://${d.blueprint.app_id}/access_as_user`,
      }), 400, 'invalid_grant', 50126);
  });
});

describe('client assertions', () => {
  const aud = () => iss.tokenUrl;
  const assertion = (o = {}) => certAssertion({ clientId: d.blueprint.app_id, aud: aud(), cred, ...o });

  test('a well-formed assertion is accepted (the tests below each break one thing)', async () => {
    ok(await withAssertion(assertion()));
  });

  test('garbage is 50013', async () => {
    for (const g of ['garbage', 'a.b.c', 'a.b', '....', `${assertion()}x`, `${assertion()}.x`,
      Buffer.from('{"alg":"RS256"}').toString('base64url') + '..'])
      refused(await withAssertion(g), 401, 'invalid_client', 50013);
  });

  test('a wrong client_assertion_type is 90006', async () => {
    refused(await tok({ grant_type: 'client_credentials', client_id: d.blueprint.app_id, scope: apiScope('.default'),
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:saml2-bearer', client_assertion: assertion() }),
    400, 'invalid_request', 90006);
  });

  test('alg none is 700027', async () => {
    const [h, p] = assertion().split('.');
    const none = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT', x5t: cred.x5t })).toString('base64url');
    refused(await withAssertion(`${none}.${p}.`), 401, 'invalid_client', 700027);
    refused(await withAssertion(assertion({ alg: 'none' })), 401, 'invalid_client', 700027);
    assert.ok(h);
  });

  test('HS256 keyed with the certificate\'s public key is 700027', async () => {
    for (const secret of [cred.publicPem, cred.cert])
      refused(await withAssertion(assertion({ alg: 'HS256', key: secret, header: { x5t: cred.x5t } })),
        401, 'invalid_client', 700027);
  });

  test('signed with an unregistered key is 700027', async () => {
    const k = strangerKey();
    // named as the registered certificate, but signed by another key
    refused(await withAssertion(assertion({ key: k })), 401, 'invalid_client', 700027);
    refused(await withAssertion(assertion({ alg: 'PS256', key: k })), 401, 'invalid_client', 700027);
    // named as a certificate nobody registered
    refused(await withAssertion(assertion({ key: k, header: { x5t: 'AAAAAAAAAAAAAAAAAAAAAAAAAAA' } })),
      401, 'invalid_client', 700027);
    // no thumbprint at all
    refused(await withAssertion(signJwt({ alg: 'RS256', typ: 'JWT' },
      { aud: aud(), iss: d.blueprint.app_id, sub: d.blueprint.app_id, exp: now() + 600, nbf: now() }, cred.key)),
    401, 'invalid_client', 700027);
  });

  test('an expired or not-yet-valid assertion is 700024; five minutes of skew are allowed', async () => {
    const t = now();
    refused(await withAssertion(assertion({ claims: { iat: t - 3600, nbf: t - 3600, exp: t - 1800 } })),
      401, 'invalid_client', 700024);
    refused(await withAssertion(assertion({ claims: { iat: t + 3600, nbf: t + 3600, exp: t + 4200 } })),
      401, 'invalid_client', 700024);
    refused(await withAssertion(assertion({ claims: { exp: undefined } })), 401, 'invalid_client', 700024);
    ok(await withAssertion(assertion({ claims: { iat: t - 900, nbf: t - 900, exp: t - 60 } })));
    ok(await withAssertion(assertion({ claims: { iat: t + 60, nbf: t + 60, exp: t + 600 } })));
  });

  test('a wrong audience is 50013', async () => {
    for (const a of [`${iss.url}/common/oauth2/v2.0/authorize`, 'https://login.microsoftonline.com/x/oauth2/v2.0/token',
      `${iss.url}/nope/oauth2/v2.0/token`, d.blueprint.app_id, `${iss.tokenUrl}/extra`])
      refused(await withAssertion(assertion({ claims: { aud: a } })), 401, 'invalid_client', 50013);
  });

  test('sub other than the client is 50013; iss other than the client is 70021', async () => {
    refused(await withAssertion(assertion({ claims: { sub: d.api.app_id } })), 401, 'invalid_client', 50013);
    refused(await withAssertion(assertion({ claims: { iss: 'https://example.com' } })), 401, 'invalid_client', 70021);
  });

  test('the blueprint\'s certificate does not authenticate another app', async () => {
    refused(await tok({ grant_type: 'client_credentials', client_id: d.api.app_id, scope: apiScope('.default'),
      ...assertionFields(certAssertion({ clientId: d.api.app_id, aud: aud(), cred })) }),
    401, 'invalid_client', 700027);
  });
});

describe('garbage burst', () => {
  test('200 concurrent garbage requests, then /healthz and a clean SIGTERM exit', async () => {
    const junk = (i) => Buffer.from(Array.from({ length: 64 + (i * 37) % 2000 }, (_, j) => (i * 131 + j * 17) % 256));
    const shapes = [
      (i) => raw(junk(i)),                                                        // binary "form"
      (i) => raw(`grant_type=${'%'.repeat(i % 7)}&client_id=${junk(i).toString('base64')}`),
      (i) => raw(`${goodBody()}&client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`
        + `&client_assertion=${junk(i).toString('base64url')}.${junk(i + 1).toString('base64url')}.x`),
      (i) => raw(junk(i), 'application/json'),
      (i) => request(`${iss.url}/${junk(i).toString('hex').slice(0, 40)}/oauth2/v2.0/token`, { method: 'POST', ca,
        body: goodBody(), headers: { 'Content-Type': 'application/x-www-form-urlencoded' } }),
      () => request(iss.tokenUrl, { method: 'DELETE', ca }),
      (i) => tok({ ...good(), client_secret: junk(i).toString('latin1').replace(/\0/g, '') }),
      (i) => tok({ grant_type: 'user_fic', client_id: d.agent.app_id, client_assertion_type:
        'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: `e30.e30.${'A'.repeat(i % 400)}`,
        user_federated_identity_credential: 'x', username: 'y', scope: 'z' }),
    ];
    // raw TLS connections writing broken HTTP: MHD must answer or hang up, never crash
    const broken = (i) => new Promise((resolve) => {
      const s = tls.connect({ host: '127.0.0.1', port: iss.port, ca, servername: 'localhost' }, () => {
        s.end(['POST /x HTTP/1.1\r\nContent-Length: -5\r\n\r\n', 'GARBAGE\r\n\r\n',
          'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', `\0\x01\x02${'\xff'.repeat(i)}`][i % 4]);
      });
      let t = '';
      s.on('data', (c) => { t += c; });
      s.on('close', () => resolve(t));
      s.on('error', () => resolve(t));
      s.setTimeout(5000, () => s.destroy());
    });
    const jobs = Array.from({ length: 200 }, (_, i) => (i % 10 === 9 ? broken(i) : shapes[i % shapes.length](i)));
    const results = await Promise.all(jobs);
    let answered = 0;
    for (const [i, r] of results.entries()) {
      if (typeof r === 'string') {   // raw connection: an HTTP 4xx or nothing
        if (r) assert.match(r, /^HTTP\/1\.[01] 4\d\d /, `raw ${i}: ${r.slice(0, 80)}`);
        continue;
      }
      answered++;
      assert.ok([400, 401, 405].includes(r.status), `request ${i}: ${r.status} ${r.text}`);
      assert.ok(r.json?.error, `request ${i}: ${r.text}`);
      assert.equal(r.json.error_codes.length, 1);
      assert.ok(r.json.error_description.startsWith(`AADSTS${r.json.error_codes[0]}: `));
    }
    assert.equal(answered, 180);

    const h = await request(`${iss.url}/healthz`, { ca });
    assert.equal(h.status, 200);
    assert.equal(h.text, 'Healthy');
    ok(await tok(good()));
    stopped = true;
    assert.equal(await iss.stop(), 0, 'exits 0 on SIGTERM (no leaks or sanitizer reports)');
  });
});
