"""Generates the example project's datasets (run once from example_project/; the JSONL files are committed)."""
import json, random
rng = random.Random(7)
billing = [
    "I was charged twice for my {plan} subscription this month.",
    "Why is there an extra fee of ${amt} on my last invoice?",
    "My refund for order {order} still hasn't arrived.",
    "Can I get a receipt for the payment I made on {day}?",
    "You billed my card ${amt} but I cancelled last week.",
    "The invoice shows the wrong VAT number for my company.",
    "How do I switch from monthly to yearly billing on the {plan} plan?",
    "My credit card was declined when I tried to renew.",
    "I want my money back for the {plan} upgrade, it was a mistake.",
    "Please explain the ${amt} charge on my statement.",
    "Do you offer a discount if I pay for a whole year?",
    "The price went up without any notice, why am I paying ${amt} now?",
]
technical = [
    "The app crashes every time I open the {screen} page.",
    "I get error {code} when I upload a file.",
    "The {screen} screen stays blank on my {device}.",
    "Sync between my {device} and the web app stopped working yesterday.",
    "Push notifications no longer arrive on my {device}.",
    "The export to CSV produces an empty file.",
    "Search returns no results even for words I know are there.",
    "The page loads forever after the latest update.",
    "I keep getting logged out of the {device} app every few minutes with error {code}.",
    "Dark mode makes the text on the {screen} page unreadable.",
    "The API returns {code} for every request since this morning.",
    "Images in the {screen} view are broken and show a grey box.",
]
account = [
    "How do I change the email address on my profile?",
    "Please reset my password, I am locked out.",
    "I want to delete my account and all my data.",
    "How can I add a second user to my team account?",
    "I can't turn on two-factor authentication for my login.",
    "Please merge my two accounts, I signed up twice by mistake.",
    "How do I change my username to {name}?",
    "My account was suspended and I don't know why.",
    "Can I transfer ownership of the workspace to {name}?",
    "I no longer have access to the phone number used for my login code.",
    "Update the name on my profile to {name}, please.",
    "Someone else logged into my account, please lock it.",
]
other = [
    "Do you have an office in {city}?",
    "Are you hiring interns this summer?",
    "I love your product, keep up the good work!",
    "Can I partner with you for a webinar in {city}?",
    "What is the history behind your company name?",
    "Will you be at the trade fair in {city} next month?",
    "Could you send me your press kit?",
    "Is there a student community or meetup in {city}?",
    "Who designed your logo? It looks great.",
    "Do you sponsor open source projects?",
    "I'd like to write a blog post about your team.",
    "What are your support hours on public holidays?",
]
fill = dict(
    plan=["Pro", "Team", "Basic", "Premium"], amt=["12", "49", "7.50", "120"], order=["#4821", "#7733", "#1290", "#5502"],
    day=["Monday", "March 3", "the 14th", "Friday"], screen=["settings", "dashboard", "reports", "calendar"],
    code=["500", "403", "E42", "timeout 504"], device=["iPhone", "Android phone", "iPad", "laptop"],
    name=["maria.k", "jdoe", "Tom Baker", "sam_r"], city=["Berlin", "Lisbon", "Toronto", "Osaka"],
)
def render(t):
    out = t
    for k, vals in fill.items():
        if "{" + k + "}" in out:
            out = out.replace("{" + k + "}", rng.choice(vals))
    return out
rows = []
for team, temps in [("billing", billing), ("technical", technical), ("account", account), ("other", other)]:
    seen = set()
    while len(seen) < 20:
        seen.add(render(rng.choice(temps)))
    rows += [{"message": m, "team": team} for m in sorted(seen)]
rng.shuffle(rows)
train, dev = rows[:40], rows[40:]
for name, data in [("triage_train", train), ("triage_dev", dev)]:
    with open(f"tests/data/{name}.jsonl", "w") as f:
        for r in data: f.write(json.dumps(r) + "\n")

products = ["Pixel 8", "Galaxy S23", "iPhone 15", "ThinkPad X1", "MacBook Air", "Kindle Paperwhite", "AirPods Pro",
            "Apple Watch", "Surface Pro", "PlayStation 5", "Switch OLED", "GoPro Hero 12", "Echo Dot", "Fire TV Stick",
            "Roomba j7", "Dyson V15", "Instant Pot", "Nest Thermostat", "Fitbit Charge 6", "Steam Deck"]
ptemps = [
    "Hi, the {p} I bought last week won't turn on anymore.",
    "My {p} arrived with a cracked screen, what can I do?",
    "Is the {p} compatible with the charger from my old phone?",
    "I ordered a {p} but received a different item.",
    "The battery on my {p} drains in two hours.",
    "Can I return the {p}? It was a gift and I don't need it.",
    "How long is the warranty on the {p}?",
    "The {p} keeps restarting after the update.",
    "Thanks, the replacement {p} works perfectly now.",
    "Where can I find the manual for the {p}?",
]
prow = []
for i in range(96):
    p = products[i % len(products)]
    t = ptemps[(i * 7 + i // 20) % len(ptemps)]
    prow.append({"message": t.format(p=p), "product": p})
uniq = {r["message"]: r for r in prow}
prow = list(uniq.values())
rng.shuffle(prow)
half = len(prow) // 2
phr = ["The message is about the {p}.", "The customer mentions the {p}.",
       "The product named in the message is the {p}.", "They are writing about their {p}."]
for i, r in enumerate(prow[:half]):  # hand-written rationales for ChainOfThought's labeled demos
    r["reasoning"] = phr[i % len(phr)].format(p=r["product"])
for name, data in [("product_train", prow[:half]), ("product_dev", prow[half:])]:
    with open(f"tests/data/{name}.jsonl", "w") as f:
        for r in data: f.write(json.dumps(r) + "\n")
print(len(train), len(dev), len(prow[:half]), len(prow[half:]))
