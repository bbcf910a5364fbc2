// `agentid gateway` jwtAuth with the signature algorithms other issuers than Entra use: a JWKS
// holding RSA, EC P-256, P-384 and P-521 and Ed25519 keys; tokens signed by node's crypto with RS256,
// RS384/512, PS256/384/512, ES256/384/512 and EdDSA pass, and each is refused when altered, when its kid names a key
// of another kind, or with alg none / HS256.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, sign, createHmac, constants } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { start, request } from './harness.mjs';
import { startRecorder } from './sidecar.mjs';

const ISS = 'https://issuer.test/v2.0', AUD = 'api://algs';
const ISS2 = 'https://other-issuer.test', AUD2 = 'api://algs-too';
const keys = {
  rsa: generateKeyPairSync('rsa', { modulusLength: 2048 }),
  p256: generateKeyPairSync('ec', { namedCurve: 'P-256' }),
  p384: generateKeyPairSync('ec', { namedCurve: 'P-384' }),
  p521: generateKeyPairSync('ec', { namedCurve: 'P-521' }),
  ed: generateKeyPairSync('ed25519'),
  other: generateKeyPairSync('ec', { namedCurve: 'P-256' }), // the second provider's
};
const jwk = (name) => ({ ...keys[name].publicKey.export({ format: 'jwk' }), kid: name, use: 'sig' });

/** A token signed the JWS way for alg with the named key (kid defaults to the key's name). */
function tokenFor(alg, name, kid = name, { iss = ISS, aud = AUD, drop = [] } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const head = Buffer.from(JSON.stringify({ alg, typ: 'JWT', kid })).toString('base64url');
  const claims = { iss, aud, sub: 'someone', iat: now, nbf: now - 5, exp: now + 600 };
  for (const c of drop) delete claims[c];
  const body = Buffer.from(JSON.stringify(claims)).toString('base64url');
  const data = Buffer.from(`${head}.${body}`);
  const key = keys[name].privateKey;
  const sig = {
    RS256: () => sign('sha256', data, key),
    RS384: () => sign('sha384', data, key),
    RS512: () => sign('sha512', data, key),
    PS256: () => sign('sha256', data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }),
    PS384: () => sign('sha384', data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 48 }),
    PS512: () => sign('sha512', data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 64 }),
    ES256: () => sign('sha256', data, { key, dsaEncoding: 'ieee-p1363' }),
    ES384: () => sign('sha384', data, { key, dsaEncoding: 'ieee-p1363' }),
    ES512: () => sign('sha512', data, { key, dsaEncoding: 'ieee-p1363' }),
    EdDSA: () => sign(null, data, key),
  }[alg]();
  return `${head}.${body}.${sig.toString('base64url')}`;
}

let rec, G, dir;
before(async () => {
  rec = await startRecorder();
  dir = mkdtempSync(join(tmpdir(), 'agentid-algs-'));
  writeFileSync(join(dir, 'keys.json'), JSON.stringify({ keys: ['rsa', 'p256', 'p384', 'p521', 'ed'].map(jwk) }));
  writeFileSync(join(dir, 'keys2.json'), JSON.stringify({ keys: [jwk('other')] }));
  writeFileSync(join(dir, 'gateway.yaml'), `binds:
- port: 0
  listeners:
  - routes:
    - name: multi
      matches: [{path: {pathPrefix: /multi}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        jwtAuth:
          providers:
          - {issuer: "${ISS}", audiences: ["${AUD}"], jwks: {file: keys.json}}
          - {issuer: "${ISS2}", audiences: ["${AUD2}"], jwks: {file: keys2.json}}
    - name: in-query
      matches: [{path: {pathPrefix: /q}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        jwtAuth: {issuer: "${ISS}", audiences: ["${AUD}"], jwks: {file: keys.json}, location: {queryParameter: {name: access_token}}}
    - name: in-cookie
      matches: [{path: {pathPrefix: /c}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        jwtAuth: {issuer: "${ISS}", audiences: ["${AUD}"], jwks: {file: keys.json}, location: {cookie: {name: session}}}
    - name: in-header
      matches: [{path: {pathPrefix: /h}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        jwtAuth: {issuer: "${ISS}", audiences: ["${AUD}"], jwks: {file: keys.json}, location: {header: {name: X-Api-Token, prefix: "Token "}}}
    - name: more-claims
      matches: [{path: {pathPrefix: /more}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        jwtAuth: {issuer: "${ISS}", jwks: {file: keys.json}, jwtValidationOptions: {requiredClaims: [exp, sub, aud]}}
    - name: no-claims
      matches: [{path: {pathPrefix: /none}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        jwtAuth: {issuer: "${ISS}", jwks: {file: keys.json}, jwtValidationOptions: {requiredClaims: []}}
    - name: api
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        jwtAuth: {issuer: "${ISS}", audiences: ["${AUD}"], jwks: {file: keys.json}}
`);
  G = await start(['gateway', '--config', join(dir, 'gateway.yaml')]);
});

after(async () => {
  assert.equal(await G?.stop(), 0, 'clean exit (no leaks under ASan)');
  await rec?.close();
  rmSync(dir, { recursive: true, force: true });
});

const call = (tok) => request(`${G.url}/x`, { headers: { Authorization: `Bearer ${tok}` } });

test('RS256/384/512, PS256/384/512, ES256/384/512 and EdDSA tokens pass with their keys from the JWKS', async () => {
  for (const [alg, name] of [['RS256', 'rsa'], ['RS384', 'rsa'], ['RS512', 'rsa'], ['PS256', 'rsa'], ['PS384', 'rsa'],
    ['PS512', 'rsa'], ['ES256', 'p256'], ['ES384', 'p384'], ['ES512', 'p521'], ['EdDSA', 'ed']]) {
    const r = await call(tokenFor(alg, name));
    assert.equal(r.status, 201, `${alg}: ${r.text}`);
    // twice: the second comes from the verified-token cache, the first was checked in full
    assert.equal((await call(tokenFor(alg, name))).status, 201, alg);
  }
});

test('altered, a key of another kind, none and HS256: 401 with the failed check', async () => {
  for (const [alg, name] of [['ES256', 'p256'], ['ES384', 'p384'], ['ES512', 'p521'], ['EdDSA', 'ed'], ['PS512', 'rsa'],
    ['RS384', 'rsa']]) {
    const t = tokenFor(alg, name);
    const sig = t.split('.')[2];
    const mid = Math.floor(sig.length / 2);
    const altered = `${t.slice(0, t.length - sig.length)}${sig.slice(0, mid)}${sig[mid] === 'A' ? 'B' : 'A'}${sig.slice(mid + 1)}`;
    const r = await call(altered);
    assert.equal(r.status, 401, alg);
    assert.equal(r.json.failed_check, 'signature', alg);
  }
  // signed right, but the kid names a key of another kind or curve: never read as that kind
  for (const [alg, name, kid] of [['ES256', 'p256', 'p384'], ['ES512', 'p521', 'p384'], ['ES256', 'p256', 'rsa'], ['EdDSA', 'ed', 'p256'],
    ['RS256', 'rsa', 'p256']]) {
    const r = await call(tokenFor(alg, name, kid));
    assert.equal(r.status, 401, `${alg} with kid ${kid}`);
    assert.equal(r.json.failed_check, 'signature', `${alg} with kid ${kid}`);
  }
  const [head, body] = tokenFor('ES256', 'p256').split('.');
  const none = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT', kid: 'p256' })).toString('base64url');
  assert.equal((await call(`${none}.${body}.`)).status, 401, 'alg none');
  const hs = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT', kid: 'p256' })).toString('base64url');
  const mac = createHmac('sha256', JSON.stringify(jwk('p256'))).update(`${hs}.${body}`).digest('base64url');
  const r = await call(`${hs}.${body}.${mac}`);
  assert.equal(r.status, 401, 'HS256 keyed with the public key');
  assert.match(r.json.error_description, /alg not allowed/);
  assert.ok(head);
});

test('jwtAuth.providers: a token of either issuer passes with its own keys and audiences, and only so', async () => {
  const multi = (tok) => request(`${G.url}/multi/x`, { headers: { Authorization: `Bearer ${tok}` } });
  assert.equal((await multi(tokenFor('ES256', 'p256'))).status, 201, 'the first provider\'s');
  assert.equal((await multi(tokenFor('ES256', 'other', 'other', { iss: ISS2, aud: AUD2 }))).status, 201, 'the second\'s');
  assert.equal((await multi(tokenFor('EdDSA', 'ed'))).status, 201);
  const cases = [
    [tokenFor('ES256', 'p256', 'p256', { iss: ISS2, aud: AUD2 }), 'signature', 'the second issuer with the first\'s key'],
    [tokenFor('ES256', 'other', 'other', { iss: ISS, aud: AUD }), 'signature', 'the first issuer with the second\'s key'],
    [tokenFor('ES256', 'other', 'other', { iss: ISS2, aud: AUD }), 'audience', 'the second issuer, the first\'s audience'],
    [tokenFor('ES256', 'p256', 'p256', { iss: 'https://nobody.test' }), 'issuer', 'no provider\'s issuer'],
  ];
  for (const [tok, check, what] of cases) {
    const r = await multi(tok);
    assert.equal(r.status, 401, what);
    assert.equal(r.json.failed_check, check, what);
  }
  const prm = await request(`${G.url}/.well-known/oauth-protected-resource/multi`);
  assert.equal(prm.status, 200);
  assert.deepEqual(prm.json.authorization_servers, [ISS, ISS2], 'every provider\'s issuer');
});

test('jwtAuth.location: the token from a query parameter, a cookie or a header; it goes no further', async () => {
  const tok = tokenFor('ES256', 'p256');
  let r = await request(`${G.url}/q/x?a=1&access_token=${tok}&b=2`);
  assert.equal(r.status, 201, r.text);
  assert.deepEqual(rec.seen.at(-1).query, { a: '1', b: '2' }, 'the other parameters, not the token');
  r = await request(`${G.url}/q/x?access_token=${tok}`);
  assert.equal(r.status, 201);
  assert.equal(rec.seen.at(-1).path, '/q/x');
  assert.deepEqual(rec.seen.at(-1).query, {});
  r = await request(`${G.url}/q/x?a=1`, { headers: { Authorization: `Bearer ${tok}` } });
  assert.equal(r.status, 401, 'not looked for in the Authorization header');
  assert.equal(r.json.failed_check, 'missing');
  assert.match(r.json.error_description, /no token in the query parameter access_token/);

  r = await request(`${G.url}/c/x`, { headers: { Cookie: `theme=dark; session=${tok}; lang=nb` } });
  assert.equal(r.status, 201, r.text);
  assert.equal(rec.seen.at(-1).headers.cookie, 'theme=dark; lang=nb', 'the other cookies, not the token');
  r = await request(`${G.url}/c/x`, { headers: { Cookie: `session=${tok}` } });
  assert.equal(r.status, 201);
  assert.equal(rec.seen.at(-1).headers.cookie, undefined);
  r = await request(`${G.url}/c/x`, { headers: { Cookie: 'session=nonsense; theme=dark' } });
  assert.equal(r.status, 401);
  assert.equal(r.json.failed_check, 'malformed');

  r = await request(`${G.url}/h/x`, { headers: { 'X-Api-Token': `token ${tok}`, 'X-Other': 'kept' } });
  assert.equal(r.status, 201, r.text);
  assert.equal(rec.seen.at(-1).headers['x-api-token'], undefined, 'the token header is not forwarded');
  assert.equal(rec.seen.at(-1).headers['x-other'], 'kept');
  r = await request(`${G.url}/h/x`, { headers: { 'X-Api-Token': tok } });
  assert.equal(r.status, 401, 'without its prefix');
  assert.equal(r.json.failed_check, 'missing');
});

test('jwtValidationOptions.requiredClaims: named claims must be there; [] does not even ask for exp', async () => {
  const at = (path, tok) => request(`${G.url}${path}`, { headers: { Authorization: `Bearer ${tok}` } });
  assert.equal((await at('/more/x', tokenFor('ES256', 'p256'))).status, 201);
  for (const c of ['sub', 'aud', 'exp']) {
    const r = await at('/more/x', tokenFor('ES256', 'p256', 'p256', { drop: [c] }));
    assert.equal(r.status, 401, `no ${c}`);
    assert.equal(r.json.failed_check, 'malformed', `no ${c}`);
  }
  assert.equal((await at('/x', tokenFor('ES256', 'p256', 'p256', { drop: ['exp'] }))).status, 401, 'exp by default');
  assert.equal((await at('/none/x', tokenFor('ES256', 'p256', 'p256', { drop: ['exp', 'sub', 'nbf'] }))).status, 201,
    'none required');
  const old = tokenFor('ES256', 'p256');
  assert.equal((await at('/none/x', old)).status, 201, 'exp, when there, is still checked (this one is valid)');
});
