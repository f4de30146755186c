-- wrk script for `make bench`: POST the README's sample record to the target URL
-- (http://127.0.0.1:PORT/log), keep-alive, Content-Type: application/json.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"user_id": 1, "total": 1.65, "title": "delectus aut autem", "meta": {"logins": [{"time": "2020-08-08T01:52:50Z", "ip": "0.0.0.0"}], "phone_numbers": {"home": "555-1212", "mobile": "123-5555"}}, "completed": false}'
