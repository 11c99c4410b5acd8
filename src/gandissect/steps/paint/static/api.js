// The JSON API call both pages use: GET (no body) or POST a JSON body; the server's 4xx answer
// {"error", "field", "expected"} becomes the Error's message.
"use strict";

async function gandissectApi(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new Error(`cannot reach the server (${err.message})`);
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    if (data && data.error) {
      let text = data.error;
      if (data.field) text += ` (${data.field})`;
      if (data.expected) text += `; expected ${data.expected}`;
      throw new Error(text);
    }
    throw new Error(`the server answered ${response.status} ${response.statusText}`);
  }
  if (data === null) throw new Error(`the server sent no JSON for ${path}`);
  return data;
}
