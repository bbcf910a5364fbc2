// `agentid gateway`'s route hostnames, requestHeaderModifier, responseHeaderModifier,
// urlRewrite.path, directResponse and requestRedirect, in agentgateway's shape (add/set as name: value mappings, remove as a list;
// path prefix or full; body and status), seen from the upstream (a recorder) and from the
// client; bad settings stop start-up.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { start, request, run } from './harness.mjs';
import { startRecorder } from './sidecar.mjs';

let rec, rec2, G, dir;

const config = (up, up2) => `binds:
- port: 0
  listeners:
  - routes:
    - name: svc
      matches: [{path: {pathPrefix: /svc}}]
      backends: [{host: "${up}"}]
      policies:
        urlRewrite: {path: {prefix: /}}
        requestHeaderModifier:
          set: {X-Set: one, Accept: application/json}
          add: {X-Add: two}
          remove: [X-Drop, User-Agent, X-Forwarded-Host]
        responseHeaderModifier:
          set: {X-Recorder: replaced}
          add: {X-Extra: e}
    - name: versioned
      matches: [{path: {pathPrefix: /v1pre}}]
      backends: [{host: "${up}"}]
      policies:
        urlRewrite: {path: {prefix: /v2/}}
        responseHeaderModifier: {remove: [X-Recorder]}
    - name: fixed
      matches: [{path: {exact: /full}}]
      backends: [{host: "${up}"}]
      policies:
        urlRewrite: {path: {full: /fixed/path}}
    - name: auth-full
      matches: [{path: {pathPrefix: /af}}]
      backends: [{host: "${up}"}]
      policies: {urlRewrite: {authority: {full: "api.internal:9000"}}}
    - name: auth-host
      matches: [{path: {pathPrefix: /ah}}]
      backends: [{host: "${up}"}]
      policies: {urlRewrite: {authority: {host: svc.local}, path: {prefix: /}}}
    - name: auth-port
      matches: [{path: {pathPrefix: /ap}}]
      backends: [{host: "${up}"}]
      policies: {urlRewrite: {authority: {port: 8443}}}
    - name: balanced
      matches: [{path: {pathPrefix: /lb}}]
      backends: [{host: "${up}", weight: 3}, {url: "http://${up2}"}]
    - name: drained
      matches: [{path: {pathPrefix: /drain}}]
      backends: [{host: "${up2}", weight: 0}, {host: "${up}", weight: 5}]
    - name: plain
      matches: [{path: {pathPrefix: /plain}}]
      backends: [{host: "${up}"}]
    - name: named
      matches: [{path: {pathPrefix: /named}}]
      backends: [{host: "localhost:${up.split(':').pop()}"}]
    - name: maintenance
      matches: [{path: {pathPrefix: /down}}]
      policies:
        directResponse: {body: "back soon", status: 503}
    - name: host-exact
      hostnames: [api.example.com]
      matches: [{path: {pathPrefix: /h}}]
      policies: {directResponse: {body: exact}}
    - name: host-wild
      hostnames: ["*.example.com", "*.example.org"]
      matches: [{path: {pathPrefix: /h}}]
      policies: {directResponse: {body: wildcard}}
    - name: host-deep
      hostnames: ["*.deep.example.com"]
      matches: [{path: {pathPrefix: /h}}]
      policies: {directResponse: {body: deeper}}
    - name: host-any
      matches: [{path: {pathPrefix: /h/longer}}]
      policies: {directResponse: {body: any}}
    - name: to-https
      matches: [{path: {pathPrefix: /old}}]
      policies: {requestRedirect: {scheme: https}}
    - name: moved
      matches: [{path: {exact: /moved}}]
      policies: {requestRedirect: {path: {full: /new}, status: 301}}
    - name: elsewhere
      matches: [{path: {pathPrefix: /v1}}]
      policies: {requestRedirect: {authority: {host: example.com}, path: {prefix: /v2}}}
    - name: full-authority
      matches: [{path: {pathPrefix: /far}}]
      policies: {requestRedirect: {scheme: https, authority: {full: "example.org:8443"}, status: 308}}
    - name: re-items
      matches: [{path: {regex: "/items/[0-9]+(/details)?"}}]
      policies: {directResponse: {body: "item by regex"}}
    - name: items-any
      matches: [{path: {pathPrefix: /items}}]
      policies: {directResponse: {body: "items prefix"}}
    - name: by-query
      matches: [{path: {pathPrefix: /q}, query: [{name: version, value: "2"}, {name: tag, value: {regex: 'v[0-9]+\\.[0-9]+'}}]}]
      policies: {directResponse: {body: "query v2"}}
    - name: by-header-regex
      matches: [{path: {pathPrefix: /q}, headers: [{name: x-tenant, value: {regex: "(a|b)-[a-z]+"}}]}]
      policies: {directResponse: {body: "header regex"}}
    - name: q-rest
      matches: [{path: {pathPrefix: /q}}]
      policies: {directResponse: {body: "q"}}
    - name: empty
      matches: [{path: {exact: /ping}}]
      policies:
        directResponse: {}
        localRateLimit: [{maxTokens: 1, tokensPerFill: 1, fillInterval: 1h}]
`;

before(async () => {
  rec = await startRecorder();
  rec2 = await startRecorder();
  dir = mkdtempSync(join(tmpdir(), 'agentid-rewrite-'));
  writeFileSync(join(dir, 'gateway.yaml'), config(rec.url.slice(7), rec2.url.slice(7)));
  G = await start(['gateway', '--config', join(dir, 'gateway.yaml')]);
});

after(async () => {
  assert.equal(await G?.stop(), 0, 'clean exit (no leaks under ASan)');
  await rec?.close();
  await rec2?.close();
  rmSync(dir, { recursive: true, force: true });
});

test('urlRewrite.path.prefix takes the matched prefix\'s place; the query stays', async () => {
  const cases = [['/svc/items/7?x=1&y=%2F', '/items/7', { x: '1', y: '/' }], ['/svc', '/', {}], ['/svc/', '/', {}],
    ['/v1pre/a/b?q=1', '/v2/a/b', { q: '1' }], ['/v1pre', '/v2/', {}], ['/plain/as/is?z=2', '/plain/as/is', { z: '2' }]];
  for (const [path, want, query] of cases) {
    const r = await request(`${G.url}${path}`);
    assert.equal(r.status, 201, `${path}: ${r.text}`);
    assert.equal(rec.last().path, want, path);
    assert.deepEqual(rec.last().query, query, path);
  }
});

test('urlRewrite.path.full replaces the whole path', async () => {
  assert.equal((await request(`${G.url}/full?k=v`)).status, 201);
  assert.equal(rec.last().path, '/fixed/path');
  assert.deepEqual(rec.last().query, { k: 'v' });
});

test('urlRewrite.authority: the Host the upstream gets (full, or host and port over the backend\'s)', async () => {
  const upPort = rec.url.split(':').pop();
  for (const [path, host, seenPath] of [['/af/x', 'api.internal:9000', '/af/x'], ['/ah/y', `svc.local:${upPort}`, '/y'],
    ['/ap/z', '127.0.0.1:8443', '/ap/z'], ['/plain/p', `127.0.0.1:${upPort}`, '/plain/p']]) {
    const r = await request(`${G.url}${path}`, { headers: { Host: 'client.example' } });
    assert.equal(r.status, 201, path);
    assert.equal(rec.last().headers.host, host, path);
    assert.equal(rec.last().path, seenPath, path);
    assert.equal(rec.last().headers['x-forwarded-host'], 'client.example', 'the client\'s stays in X-Forwarded-Host');
  }
});

test('a backend by host name (localhost, from /etc/hosts: 127.0.0.1 first) answers as one by address', async () => {
  const upPort = rec.url.split(':').pop();
  for (let i = 0; i < 10; i++) {
    const r = await request(`${G.url}/named/${i}?n=${i}`, { method: i % 2 ? 'POST' : 'GET', body: i % 2 ? `body ${i}` : undefined });
    assert.equal(r.status, 201, r.text);
    assert.equal(rec.last().path, `/named/${i}`);
    assert.deepEqual(rec.last().query, { n: String(i) });
    assert.equal(rec.last().headers.host, `localhost:${upPort}`, 'Host as the backend names it');
    if (i % 2) assert.equal(rec.last().body, `body ${i}`);
  }
});

test('several backends: requests spread in proportion to their weights; weight 0 gets none', async () => {
  const [a0, b0] = [rec.seen.length, rec2.seen.length];
  for (let i = 0; i < 200; i++) assert.equal((await request(`${G.url}/lb/${i}`)).status, 201);
  const [a, b] = [rec.seen.length - a0, rec2.seen.length - b0];
  assert.equal(a + b, 200);
  assert.ok(a >= 110 && a <= 185, `weight 3 against 1: ${a} and ${b} of 200`); // 150 expected, 6 sd either side
  for (let i = 0; i < 30; i++) await request(`${G.url}/drain/${i}`);
  assert.equal(rec2.seen.length - b0, b, 'nothing to the backend of weight 0');
});

test('requestHeaderModifier: set replaces, add adds, remove takes the client\'s and the gateway\'s own away', async () => {
  await request(`${G.url}/svc/h`, { headers: { 'X-Set': 'from-client', 'X-Drop': 'gone', 'X-Keep': 'kept', 'User-Agent': 'ua', Accept: 'text/plain' } });
  const h = rec.last().headers;
  assert.equal(h['x-set'], 'one', 'set wins over the client');
  assert.equal(h.accept, 'application/json');
  assert.equal(h['x-add'], 'two');
  assert.equal(h['x-drop'], undefined);
  assert.equal(h['user-agent'], undefined);
  assert.equal(h['x-forwarded-host'], undefined, 'one of the gateway\'s own, removed');
  assert.ok(h['x-forwarded-for'], 'the others stay');
  assert.equal(h['x-keep'], 'kept');
  await request(`${G.url}/plain/h`, { headers: { 'X-Drop': 'here', 'User-Agent': 'ua' } });
  assert.equal(rec.last().headers['x-drop'], 'here', 'another route is untouched');
  assert.equal(rec.last().headers['user-agent'], 'ua');
});

test('responseHeaderModifier: on the upstream\'s answers of its route only', async () => {
  let r = await request(`${G.url}/svc/x`);
  assert.equal(r.headers['x-recorder'], 'replaced');
  assert.equal(r.headers['x-extra'], 'e');
  assert.match(r.headers['content-type'], /application\/json/, 'the type is the upstream\'s');
  r = await request(`${G.url}/v1pre/x`);
  assert.equal(r.headers['x-recorder'], undefined);
  r = await request(`${G.url}/plain/x`);
  assert.equal(r.headers['x-recorder'], 'yes');
  assert.equal(r.headers['x-extra'], undefined);
});

test('directResponse: the gateway answers, nothing goes upstream; the route\'s other policies still apply', async () => {
  const seen = rec.seen.length;
  const r = await request(`${G.url}/down/anything?x=1`, { method: 'POST', body: '{"a":1}' });
  assert.equal(r.status, 503);
  assert.equal(r.text, 'back soon');
  assert.match(r.headers['content-type'], /^text\/plain/);
  const p = await request(`${G.url}/ping`);
  assert.equal(p.status, 200);
  assert.equal(p.text, '');
  assert.equal((await request(`${G.url}/ping`)).status, 429, 'its rate limit first');
  assert.equal(rec.seen.length, seen, 'the upstream saw none of these');
});

test('hostnames: the closest host fit wins before the path; a route without hostnames takes any host', async () => {
  const cases = [['api.example.com', 'exact'], ['API.example.com:8080', 'exact'], ['foo.example.com', 'wildcard'],
    ['a.b.example.com', 'wildcard'], ['x.deep.example.com', 'deeper'], ['example.com', 'any'], ['other.org', 'any']];
  for (const [host, want] of cases) {
    const r = await request(`${G.url}/h/longer/x`, { headers: { Host: host } });
    assert.equal(r.text, want, host);
  }
  const r = await request(`${G.url}/h/short`, { headers: { Host: 'other.org' } });
  assert.equal(r.status, 404, 'no route for that host and path');
});

test('requestRedirect: Location is the request\'s URL with the given parts replaced; nothing goes upstream', async () => {
  const seen = rec.seen.length;
  const port = G.port;
  const cases = [
    ['/old/x?q=1', 302, 'https://127.0.0.1/old/x?q=1'],
    ['/moved?k=v', 301, `http://127.0.0.1:${port}/new?k=v`],
    ['/v1/a/b', 302, `http://example.com:${port}/v2/a/b`],
    ['/far/z', 308, 'https://example.org:8443/far/z'],
  ];
  for (const [path, status, location] of cases) {
    const r = await request(`${G.url}${path}`, { method: 'POST', body: 'x' });
    assert.equal(r.status, status, path);
    assert.equal(r.headers.location, location, path);
  }
  assert.equal(rec.seen.length, seen);
});

test('matches: a path regex (the whole path), query parameters and header regexes', async () => {
  const cases = [
    ['/items/42', {}, 'item by regex'], ['/items/42/details', {}, 'item by regex'],
    ['/items/42/other', {}, 'items prefix'], ['/items/x42', {}, 'items prefix'], ['/items/', {}, 'items prefix'],
    ['/q?version=2&tag=v1.10', {}, 'query v2'], ['/q?tag=v1.10&version=2&more=1', {}, 'query v2'],
    ['/q?version=2&tag=v1', {}, 'q'], ['/q?version=3&tag=v1.1', {}, 'q'], ['/q?version=2&tag=xv1.1', {}, 'q'],
    ['/q', { 'X-Tenant': 'a-east' }, 'header regex'], ['/q', { 'X-Tenant': 'c-east' }, 'q'],
    ['/q', { 'X-Tenant': 'a-east-1' }, 'q'],
    ['/q?version=2&tag=v2.0', { 'X-Tenant': 'b-west' }, 'header regex'], // a header match outranks a query match
  ];
  for (const [path, headers, want] of cases) {
    const r = await request(`${G.url}${path}`, { headers });
    assert.equal(r.text, want, `${path} ${JSON.stringify(headers)}`);
  }
});

test('a listener hostname: its routes serve that host only', async () => {
  const f = join(dir, 'listener-host.yaml');
  writeFileSync(f, `binds:\n- port: 0\n  listeners:\n  - hostname: "*.example.com"\n    routes:\n    - name: inside\n      policies: {directResponse: {body: inside}}\n    - name: narrower\n      hostnames: [api.example.com]\n      policies: {directResponse: {body: api}}\n  - routes:\n    - name: rest\n      policies: {directResponse: {body: rest}}\n`);
  const g = await start(['gateway', '--config', f]);
  try {
    for (const [host, want] of [['x.example.com', 'inside'], ['api.example.com', 'api'], ['example.com', 'rest'], ['other.org', 'rest']])
      assert.equal((await request(`${g.url}/`, { headers: { Host: host } })).text, want, host);
  } finally {
    assert.equal(await g.stop(), 0);
  }
});

test('bad modifier or rewrite settings stop start-up with FILE:LINE: reason', () => {
  const route = (policies, backend = '{host: "127.0.0.1:1"}') =>
    `binds:\n- port: 0\n  listeners:\n  - routes:\n    - name: r\n      backends: [${backend}]\n      policies:\n${policies}`;
  const cases = [
    ['b1', '        requestHeaderModifier: {set: {Content-Length: "5"}}\n', /b1\.yaml:8: requestHeaderModifier\.set: Content-Length is the gateway's to set/],
    ['b2', '        responseHeaderModifier: {set: {Content-Type: text/html}}\n', /b2\.yaml:8: responseHeaderModifier\.set: Content-Type is the gateway's to set/],
    ['b3', '        requestHeaderModifier: {add: {"bad name": x}}\n', /b3\.yaml:8: requestHeaderModifier\.add: 'bad name' is not a header name/],
    ['b4', '        requestHeaderModifier: {sett: {}}\n', /b4\.yaml:8: .*unknown or unsupported key 'sett'/],
    ['b5', '        urlRewrite: {authority: {host: "not a host"}}\n', /b5\.yaml:8: urlRewrite\.authority: 'not a host' is not a host name/],
    ['b5b', '        urlRewrite: {authority: {}}\n', /b5b\.yaml:8: urlRewrite\.authority: give full, or host and\/or port/],
    ['b6', '        urlRewrite: {path: {prefix: nope}}\n', /b6\.yaml:8: urlRewrite\.path: 'nope' must start with \//],
    ['b7', '        urlRewrite: {path: {prefix: /a, full: /b}}\n', /b7\.yaml:8: urlRewrite\.path: give exactly one of prefix and full/],
    ['b8', '        urlRewrite: {path: {prefix: /a}}\n', /b8\.yaml:5: route r: urlRewrite needs a host backend/,
      '{ai: {name: m, provider: {openAI: {model: x}}, hostOverride: "127.0.0.1:1"}}'],
    ['b9', '        requestHeaderModifier: {set: {X-A: b}}\n', /b9\.yaml:5: route r: header modifiers need a host or ai backend/,
      '{mcp: {targets: [{name: t, mcp: {host: "http://127.0.0.1:1/mcp"}}]}}'],
    ['b10', '        directResponse: {body: x}\n', /b10\.yaml:6: route r: directResponse answers itself: no backends/],
    ['b11', '        directResponse: {status: 99}\n', /b11\.yaml:8: directResponse\.status: /],
    ['b12', '        directResponse: {body: x, headers: {a: b}}\n', /b12\.yaml:8: .*unknown or unsupported key 'headers'/],
    ['b15', '        requestRedirect: {status: 200}\n', /b15\.yaml:8: requestRedirect\.status: /],
    ['b16', '        requestRedirect: {scheme: ftp}\n', /b16\.yaml:8: requestRedirect\.scheme: expected http or https/],
    ['b17', '        requestRedirect: {scheme: https}\n', /b17\.yaml:6: route r: requestRedirect answers itself: no backends/],
  ];
  // A listener's hostname: its routes serve that host only, and theirs must fit in it.
  const lis = (routeHosts) => `binds:\n- port: 0\n  listeners:\n  - hostname: "*.example.com"\n    routes:\n    - name: r\n${routeHosts}      policies: {directResponse: {}}\n`;
  const out = join(dir, 'b14.yaml');
  writeFileSync(out, lis('      hostnames: [api.example.org]\n'));
  const or = run(['gateway', '--config', out]);
  assert.equal(or.code, 1);
  assert.match(or.stderr, /b14\.yaml:6: route r: hostname api\.example\.org is outside its listener's \*\.example\.com/);
  const host = join(dir, 'b13.yaml');
  writeFileSync(host, 'binds:\n- port: 0\n  listeners:\n  - routes:\n    - name: r\n      hostnames: ["a.*.com"]\n      policies: {directResponse: {}}\n');
  const hr = run(['gateway', '--config', host]);
  assert.equal(hr.code, 1);
  assert.match(hr.stderr, /b13\.yaml:6: hostnames: 'a\.\*\.com' is not a host name/);
  for (const [name, policies, want, backend] of cases) {
    const f = join(dir, `${name}.yaml`);
    writeFileSync(f, route(policies, backend));
    const r = run(['gateway', '--config', f]);
    assert.equal(r.code, 1, `${name}: ${r.stderr}`);
    assert.match(r.stderr, want, name);
  }
});
