// mathService: the Express sample app from Dapr's service invocation docs.
//
// POST /add with JSON {"arg1": N, "arg2": M} answers the sum as a JSON number.
// Listens on 127.0.0.1:$APP_PORT (default 3000).
'use strict';

const express = require('express');

const app = express();
app.use(express.json());

app.post('/add', (req, res) => {
  const { arg1, arg2 } = req.body || {};
  const a = Number(arg1);
  const b = Number(arg2);
  console.log(
    `mathService: POST /add from dapr-caller-app-id=${req.get('dapr-caller-app-id') || '-'} body=${JSON.stringify(req.body)}`
  );
  if (!Number.isFinite(a) || !Number.isFinite(b)) {
    res.status(400).json({ error: 'arg1 and arg2 must be numbers' });
    return;
  }
  res.json(a + b);
});

app.get('/healthz', (_req, res) => res.sendStatus(200));

const port = Number(process.env.APP_PORT || 3000);
const server = app.listen(port, '127.0.0.1', () => {
  console.log(`mathService: listening on 127.0.0.1:${port}`);
});

// Exit promptly when `ferry run` forwards SIGINT/SIGTERM.
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
