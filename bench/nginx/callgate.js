// callgate's contract in nginx + njs (Debian's libnginx-mod-http-js, njs 0.7), for the side by
// side benchmark in bench/compare.sh. Not a product: it is what an operator would build instead
// of callgate, written to be fast and faithful enough that the comparison is fair.
//
// Per voice request: strict form parse (400), X-Twilio-Signature with HMAC-SHA1 (403), only
// Direction=inbound + CallStatus=ringing is gated (400 without To), the number → its gate, else
// its agent's gate, else none; the gate is asked with a JSON POST (a subrequest through a
// keep-alive upstream when the gate is the configured one, else ngx.fetch); exactly status 200
// + {"action":"reject"} rejects with busy TwiML; anything else forwards to the engine (fail
// open, or fail closed for on_failure "reject"). One log line per decision (access_log).
//
// The routes file is read once, when nginx loads its configuration (njs runs top-level code
// then and clones that state into each request). Reloading it takes `nginx -s reload`.
// Limits against the contract: per-gate timeout_ms is not applied (nginx's proxy timeouts are
// per phase and fixed in the config), and the signed URL is only --public-url's equivalent.

const fs = require('fs');
const crypto = require('crypto');

// Replaced by bench/compare.sh when it renders this file.
const ROUTES = JSON.parse(fs.readFileSync('@ROUTES@'));
const NUMBERS = ROUTES.numbers || {};
const AGENTS = ROUTES.agents || {};

const REJECT_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>';
const BAD_ESCAPE = /%(?![0-9A-Fa-f]{2})/;

// Decoded [name, value] pairs, or null for a bad escape or invalid UTF-8.
function parseForm(text) {
    if (BAD_ESCAPE.test(text)) {
        return null;
    }
    var pairs = [];
    var pieces = text.split('&');
    try {
        for (var i = 0; i < pieces.length; i++) {
            var piece = pieces[i];
            if (piece.length === 0) {
                continue;
            }
            var eq = piece.indexOf('=');
            var name = eq < 0 ? piece : piece.substring(0, eq);
            var value = eq < 0 ? '' : piece.substring(eq + 1);
            pairs.push([decodeURIComponent(name.replace(/\+/g, ' ')), decodeURIComponent(value.replace(/\+/g, ' '))]);
        }
    } catch (e) {
        return null;
    }
    return pairs;
}

// base64(HMAC-SHA1(token, url + names and values sorted by name)), compared with the header.
function signatureValid(r, pairs) {
    var given = r.headersIn['X-Twilio-Signature'];
    if (!given) {
        return false;
    }
    var sorted = pairs.slice().sort(function (a, b) {
        if (a[0] !== b[0]) {
            return a[0] < b[0] ? -1 : 1;
        }
        return a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0;
    });
    var hmac = crypto.createHmac('sha1', r.variables.twilio_auth_token);
    hmac.update(r.variables.public_url + r.variables.request_uri);
    for (var i = 0; i < sorted.length; i++) {
        hmac.update(sorted[i][0]);
        hmac.update(sorted[i][1]);
    }
    return hmac.digest('base64') === given;
}

function first(pairs, name) {
    for (var i = 0; i < pairs.length; i++) {
        if (pairs[i][0] === name) {
            return pairs[i][1];
        }
    }
    return undefined;
}

function resolve(to) {
    var entry = NUMBERS[to];
    if (!entry) {
        return { gate: null, source: 'none', agentId: '' };
    }
    var agentId = entry.agent_id || '';
    if (entry.gate) {
        return { gate: entry.gate, source: 'number', agentId: agentId };
    }
    var agent = agentId ? AGENTS[agentId] : undefined;
    if (agent && agent.gate) {
        return { gate: agent.gate, source: 'agent', agentId: agentId };
    }
    return { gate: null, source: 'none', agentId: agentId };
}

// The gate's answer: 'accept', 'reject', or a failure cause.
function readAnswer(status, text) {
    if (status !== 200) {
        return status === 502 || status === 504 ? 'connect' : 'status';
    }
    var answer;
    try {
        answer = JSON.parse(text);
    } catch (e) {
        return 'malformed';
    }
    if (answer === null || typeof answer !== 'object' || Array.isArray(answer)) {
        return 'malformed';
    }
    return answer.action === 'accept' || answer.action === 'reject' ? answer.action : 'malformed';
}

// Asks the gate; resolves to [answer, ms].
function ask(r, gate, body) {
    var started = Date.now();
    var prefix = 'http://' + r.variables.gate_upstream;
    var done = function (answer) {
        return [answer, Date.now() - started];
    };
    if (gate.url.indexOf(prefix + '/') === 0) {
        // The configured gate: a subrequest through the keep-alive upstream.
        var uri = '/_gate' + gate.url.substring(prefix.length);
        var q = uri.indexOf('?');
        var options = { method: 'POST', body: body };
        if (q >= 0) {
            options.args = uri.substring(q + 1);
            uri = uri.substring(0, q);
        }
        return r.subrequest(uri, options).then(
            function (reply) { return done(readAnswer(reply.status, reply.responseText)); },
            function () { return done('connect'); });
    }
    return ngx.fetch(gate.url, { method: 'POST', body: body, headers: { 'Content-Type': 'application/json' } })
        .then(function (reply) {
            return reply.text().then(function (text) { return done(readAnswer(reply.status, text)); });
        }, function () { return done('connect'); });
}

function decide(r, call, decision, cause, gateMs) {
    var v = r.variables;
    v.cg_decided = '1';
    v.cg_decision = decision;
    v.cg_cause = cause;
    v.cg_gate_ms = String(gateMs);
    if (decision === 'reject' || decision === 'fail_closed') {
        r.headersOut['Content-Type'] = 'text/xml';
        r.return(200, REJECT_TWIML);
    } else {
        r.internalRedirect('@engine');
    }
}

function voice(r) {
    var text = r.method === 'GET' ? (r.variables.args || '') : (r.requestText || '');
    var pairs = parseForm(text);
    if (pairs === null) {
        r.return(400, 'bad form\n');
        return;
    }
    if (!signatureValid(r, r.method === 'GET' ? [] : pairs)) {
        r.return(403, 'bad signature\n');
        return;
    }
    if (first(pairs, 'Direction') !== 'inbound' || first(pairs, 'CallStatus') !== 'ringing') {
        r.variables.cg_decision = 'not_gated';
        r.internalRedirect('@engine');
        return;
    }
    var to = first(pairs, 'To');
    if (to === undefined) {
        r.return(400, 'missing To\n');
        return;
    }
    var call = { from: first(pairs, 'From') || '', to: to, callId: first(pairs, 'CallSid') || '' };
    var route = resolve(to);
    var v = r.variables;
    v.cg_call_id = call.callId;
    v.cg_to = to;
    v.cg_agent_id = route.agentId;
    v.cg_source = route.source;
    if (!route.gate) {
        decide(r, call, 'no_gate', '', 0);
        return;
    }
    var request = { event: 'call.inbound', from: call.from, to: to, call_id: call.callId };
    if (route.agentId) {
        request.agent_id = route.agentId;
    }
    ask(r, route.gate, JSON.stringify(request)).then(function (result) {
        var answer = result[0];
        if (answer === 'accept' || answer === 'reject') {
            decide(r, call, answer, '', result[1]);
        } else {
            var closed = route.gate.on_failure === 'reject';
            decide(r, call, closed ? 'fail_closed' : 'fail_open', answer, result[1]);
        }
    });
}

export default { voice };
