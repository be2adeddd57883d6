"""Regenerate the retention benchmark and the replay pool in finetuning_suite/data/retention/
(deterministic):

    .venv/bin/python scripts/make_retention_data.py

- retention.dev.jsonl / retention.test.jsonl: general prompts with automatic checkers
  (`finetuning_suite.infer.checks`), to measure whether fine-tuning made a small chat model
  forget general behaviour. The test half is frozen: never look at its results to tune anything.
- replay_pool.jsonl: general prompts (no answers) that training may mix in.

The split is a seeded shuffle stratified by kind, over *template groups*: items whose prompts
share a template (`checks.shares_template`) always land in the same half, so dev and test never
share a question template. The script refuses to write data where a retention prompt shares a
template with a replay-pool prompt, a `REPLAY_PROMPTS` entry or a built-in training prompt.

Written for this project and released with it under the Apache-2.0 licence.
"""
from __future__ import annotations

import glob
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from finetuning_suite.infer.checks import check, shares_template, template_key  # noqa: E402

OUT = ROOT / "finetuning_suite" / "data" / "retention"
SEED = "retention-v1"
PREFIX = {"knowledge": "know", "arithmetic": "arith", "word": "word", "format": "fmt",
          "translation": "trans", "multi_turn": "multi", "everyday": "day"}


def any_(*terms):
    return {"any": list(terms)}


def chosen(word):
    """A regex: the reply picks `word` ("Horse.", "The answer is 'horse'.", "'Horse' is an
    animal."), not merely repeats the options it was offered."""
    w = word
    return (rf"^\W*(?:(?:a|an|the)\s+)?(?:word\s+)?\W*{w}\b"
            rf"|\b(?:is|are|be|answer|choose|pick)\W+(?:(?:a|an|the|word)\s+)*\W*{w}\b"
            rf"|\b{w}\W*\s+(?:is|rhymes|starts|means)\b")


# Spelling: the letters in order, separated ("h-o-u-s-e", "H O U S E", "1. H 2. O ...").
def spelled(word):
    return r"\b" + r"[\W\d_]{1,6}".join(word) + r"\b"


# One sentence: no sentence end before the last one (a trailing quote or bracket may follow).
ONE_SENTENCE = r"^\s*[^.!?\n]{8,}[.!?]?[\"')\]]*\s*$"

# -- retention items: (kind, prompt or [user, assistant, user], check) --------------------------
KNOWLEDGE = [
    ("Which country is the city of Rome in?", any_("Italy")),
    ("Lima is the capital city of which country?", any_("Peru")),
    ("On which continent is Kenya?", any_("Africa")),
    ("Which river flows through London?", any_("Thames")),
    ("The Eiffel Tower is in which city?", any_("Paris")),
    ("Which is the coldest continent?", any_("Antarctica")),
    ("Name the largest country in the world by area.", any_("Russia")),
    ("What do we call frozen water?", any_("ice")),
    ("Which gas do we need to breathe to stay alive?", any_("oxygen")),
    ("Which part of the body do we use to see?", any_("eye", "eyes")),
    ("What force pulls objects toward the ground?", any_("gravity", "gravitational")),
    ("Which planet do we live on?",
     {"regex": r"^\W*(?:planet\s+)?earth\b|\b(?:is|called|named|on|planet)\W+(?:the\s+)?(?:planet\W+)?earth\b"
               r"|\bearth\W*\s+is\b"}),
    ("What is the center of an atom called?", any_("nucleus")),
    ("Plants make their food through which process?", any_("photosynthesis")),
    ("At what temperature in Celsius does water freeze?", any_("0", "zero")),
    ("Which bird is the largest in the world?", any_("ostrich", "ostriches")),
    ("What do caterpillars turn into?", any_("butterfly", "butterflies", "moth", "moths")),
    ("Who is the author of Harry Potter?", any_("Rowling")),
    ("Which author wrote Oliver Twist?", any_("Dickens")),
    ("Sherlock Holmes was created by which writer?", any_("Doyle")),
    ("In what year did World War II end?", any_("1945")),
    ("Which ancient civilization built the pyramids at Giza?", any_("Egypt", "Egyptian", "Egyptians")),
    ("Which country gave the Statue of Liberty to the United States?",
     {"any": ["France", "French"], "none": ["to France", "to the people of France", "from the United States"]}),
    ("Who discovered gravity when an apple fell on his head?", any_("Newton")),
    ("Which artist painted the ceiling of the Sistine Chapel?", any_("Michelangelo")),
    ("How many players does a soccer team have on the field?", any_("11", "eleven")),
    ("What sport is played at Wimbledon?", any_("tennis")),
    ("In which sport do you score a touchdown?", any_("football")),
    ("What fruit is used to make wine?", any_("grape", "grapes")),
    ("Which vegetable is orange and loved by rabbits?", any_("carrot", "carrots")),
    ("A doctor who treats animals is called what?",
     any_("vet", "vets", "veterinarian", "veterinarians", "veterinary")),
    ("Which instrument has 88 keys?", any_("piano", "pianos")),
    ("Which planet has the most famous rings?", any_("Saturn")),
    # 365 or 365.25 (or 366 in a leap year): a regex, as "365" alone would not match "365.25".
    ("How many days does it take Earth to go around the Sun?", {"regex": r"\b36[56]\b"}),
    ("What organ do humans use to think?", any_("brain")),
    ("People in Mexico mostly speak which language?", any_("Spanish")),
    ("Which metal is attracted to a magnet?", any_("iron", "steel", "nickel", "cobalt")),
    ("What animal gives us wool?", any_("sheep")),
]

ARITHMETIC = [
    ("Calculate 8 + 6.", any_("14", "fourteen")),
    ("Compute 9 - 4.", any_("5", "five")),
    ("Add 3 and 4.", any_("7", "seven")),
    ("Subtract 2 from 9.", any_("7", "seven")),
    ("What do you get if you add 5 and 6?", any_("11", "eleven")),
    ("What is 6 minus 2?", any_("4", "four")),
    ("What is 10 divided by 2?", any_("5", "five")),
    ("What is 3 multiplied by 4?", any_("12", "twelve")),
    ("What does 4 + 4 equal?", any_("8", "eight")),
    ("How much is 5 + 3?", any_("8", "eight")),
    ("Work out 12 - 5.", any_("7", "seven")),
    ("Find the sum of 4 and 9.", any_("13", "thirteen")),
    ("Find the difference between 10 and 3.", any_("7", "seven")),
    ("What is the sum of 6 and 2?", any_("8", "eight")),
    ("What is the product of 3 and 5?", any_("15", "fifteen")),
    ("What is half of 10?", any_("5", "five")),
    ("What is double 6?", any_("12", "twelve")),
    ("What is 2 squared?", any_("4", "four")),
    ("Multiply 4 by 3.", any_("12", "twelve")),
    ("Divide 12 by 4.", any_("3", "three")),
    ("Solve: 7 + 2", any_("9", "nine")),
    ("Tell me what 5 + 5 is.", any_("10", "ten")),
    ("I have 3 apples and get 2 more. How many apples do I have?", any_("5", "five")),
    ("Sarah has 4 pencils and buys 3 more. How many pencils does she have now?", any_("7", "seven")),
    ("What number is one more than 8?", any_("9", "nine")),
    ("Take 4 away from 10. What is left?", any_("6", "six")),
    ("Please add 2 and 7.", any_("9", "nine")),
    ("Quick sum: 1 + 1 = ?", any_("2", "two")),
    ("Evaluate 15 - 5.", any_("10", "ten")),
    ("What is the total of 7 and 3?", any_("10", "ten")),
    ("Count by twos: 2, 4, 6, what comes next?", any_("8", "eight")),
    ("There are 6 eggs in a box. You eat 2. How many eggs are left?", any_("4", "four")),
    ("5 + 4 = ?", any_("9", "nine")),
    ("If you have 10 candies and give away 4, how many remain?", any_("6", "six")),
    ("Add together 6 and 6.", any_("12", "twelve")),
    ("What is 9 take away 3?", any_("6", "six")),
    ("How many is 2 times 3?", any_("6", "six")),
    ("Sum 8 and 1.", any_("9", "nine")),
]

WORD = [
    ("Give the opposite of 'tall'.", any_("short")),
    ("What word means the opposite of 'fast'?", any_("slow")),
    ("Name the antonym of 'wet'.", any_("dry")),
    ("The opposite of 'light' is what?", any_("dark", "darkness", "heavy")),
    ("Tell me the opposite of 'happy'.", any_("sad", "unhappy")),
    ("What's the opposite of 'early'?", any_("late")),
    ("Write the plural of 'child'.", any_("children")),
    ("What's the plural form of 'foot'?", any_("feet")),
    ("Give the plural of 'box'.", any_("boxes")),
    ("The plural of 'tooth' is what?", any_("teeth")),
    ("More than one 'goose' are called what?", any_("geese")),
    ("Spell the word 'house'.", {"regex": spelled("house")}),
    ("Spell 'water' one letter at a time.", {"regex": spelled("water")}),
    ("What letter does the word 'banana' start with?", any_("B")),
    ("What is the last letter of the word 'dog'?", any_("G")),
    ("Give a word that rhymes with 'cat'.",
     any_("hat", "bat", "mat", "rat", "sat", "fat", "pat", "vat", "chat", "flat", "that", "splat",
          "brat", "spat", "gnat", "scat")),
    ("Name a word that rhymes with 'sun'.",
     any_("fun", "run", "bun", "one", "done", "won", "ton", "none", "gun", "spun", "nun", "stun",
          "begun", "shun")),
    ("Which word rhymes with 'cake': 'lake' or 'dog'?", {"regex": chosen("lake")}),
    ("What rhymes with 'bed'?",
     any_("red", "head", "fed", "led", "said", "bread", "dead", "shed", "sled", "wed", "spread",
          "thread", "ahead", "bled", "fled", "sped", "Ted", "Fred")),
    ("What is another word for 'big'?",
     any_("large", "huge", "giant", "enormous", "great", "massive", "gigantic", "vast", "immense",
          "tremendous")),
    ("Suggest a synonym for 'quick'.",
     any_("fast", "rapid", "swift", "speedy", "hasty", "brisk", "prompt", "fleet")),
    ("Which word means the same as 'begin'?", any_("start", "commence", "initiate", "launch")),
    ("Tell me a synonym of 'small'.",
     any_("little", "tiny", "minor", "petite", "mini", "miniature", "minute", "compact", "slight",
          "wee")),
    ("Find a word with the same meaning as 'angry'.",
     any_("mad", "furious", "upset", "cross", "irate", "annoyed", "enraged", "irritated", "livid",
          "fuming", "outraged")),
    ("What is the past tense of 'go'?", any_("went")),
    ("Give the past tense of 'eat'.", any_("ate")),
    ("Count the letters in the word 'cat'.", any_("3", "three")),
    ("Which word is a color: 'table', 'green', or 'run'?", {"regex": chosen("green")}),
    ("Which of these is an animal: 'chair', 'horse', or 'cloud'?", {"regex": chosen("horse")}),
    ("Complete the phrase: 'Once upon a ...'", any_("time")),
    ("Fill in the blank: The sun rises in the ___.", any_("east")),
    ("What is the comparative form of 'good'?", any_("better")),
    ("Turn the word 'happy' into a noun.", any_("happiness")),
    ("What is the singular of 'women'?", any_("woman")),
    ("Make the word 'kind' negative by adding a prefix.", any_("unkind")),
    ("Which word is spelled correctly: 'recieve' or 'receive'?", {"regex": chosen("receive")}),
    ("Unscramble the letters 'tac' to make an animal.", any_("cat")),
    ("Which word starts with the same sound as 'ball': 'bat' or 'cat'?", {"regex": chosen("bat")}),
]

YES = {"any": ["yes"], "none": ["no"]}
NO = {"any": ["no"], "none": ["yes"]}
FORMAT = [
    ("Answer in one word: what animal says moo?", {"any": ["cow", "cows"], "max_words": 2}),
    ("Answer in one word: what do you drink when you are thirsty?", {"any": ["water"], "max_words": 2}),
    ("In one word, what is the color of coal?", {"any": ["black"], "max_words": 2}),
    ("Using a single word, name the season when snow falls.", {"any": ["winter"], "max_words": 2}),
    ("Reply with just one word: what do birds use to fly?", {"any": ["wing", "wings"], "max_words": 2}),
    ("Name a fruit. Reply with one word only.", {"regex": r"[a-z]", "max_words": 2}),
    ('Reply in JSON with key "color" giving the color of a ripe tomato.',
     {"json_keys": ["color"], "json_values": {"color": ["red"]}}),
    ('Return a JSON object with the key "animal" set to an animal that barks.',
     {"json_keys": ["animal"], "json_values": {"animal": ["dog"]}}),
    ('Give a JSON object with keys "name" and "age" for a person named Ana who is 30.',
     {"json_keys": ["name", "age"], "json_values": {"name": ["ana"], "age": ["30"]}}),
    ('Respond with a JSON object that has a "fruit" key naming a yellow fruit.',
     {"json_keys": ["fruit"], "json_values": {"fruit": [
         "banana", "lemon", "pineapple", "mango", "papaya", "grapefruit", "apple", "pear", "melon",
         "starfruit", "quince", "passion fruit", "guava", "plantain", "durian", "jackfruit", "peach"]}}),
    ('Format your answer as JSON with the key "answer": how many legs does a spider have?',
     {"json_keys": ["answer"], "json_values": {"answer": ["8", "eight"]}}),
    ("List three fruits as a numbered list.", {"list_items": 3}),
    ("Name three colors as a bulleted list.", {"list_items": 3}),
    ("Write a numbered list of four animals.", {"list_items": 4}),
    ("Give two examples of pets, separated by a comma.", {"list_items": 2}),
    ("Use bullet points to list two vegetables.",
     {"list_items": 2, "any": [
         "carrot", "carrots", "potato", "potatoes", "broccoli", "tomato", "tomatoes", "lettuce",
         "spinach", "onion", "onions", "cucumber", "cucumbers", "pepper", "peppers", "peas", "cabbage",
         "celery", "corn", "kale", "zucchini", "eggplant", "beans", "cauliflower", "asparagus", "beet",
         "beets", "radish", "radishes", "garlic", "squash", "pumpkin", "leek", "leeks", "courgette"]}),
    ("List the first three days of the week, one per line with a dash.", {"list_items": 3}),
    ("Answer with yes or no: is the sun hot?", YES),
    ("Answer with yes or no: can a dog fly?", NO),
    ("Yes or no: is ice cold?", YES),
    ("Is fire hot? Answer yes or no.", YES),
    ("Reply only with yes or no: do fish live in water?", YES),
    ("Can a cat drive a car? Reply with yes or no.", NO),
    ("Reply in all capital letters: name a farm animal.", {"uppercase": True}),
    ("Write the word 'hello' in all capital letters.", {"uppercase": True, "any": ["hello"]}),
    ("Using only uppercase letters, write the name of a fruit.", {"uppercase": True}),
    ("Shout this in capitals: good morning", {"uppercase": True, "any": ["good morning"]}),
    ("Write exactly one sentence about dogs.", {"regex": ONE_SENTENCE}),
    ("Describe the moon in one sentence.", {"regex": ONE_SENTENCE}),
    ("In a single sentence, say why people sleep.", {"regex": ONE_SENTENCE}),
    ("Answer with a number only: how many wheels does a car have?", {"any": ["4", "four"], "max_words": 2}),
    ("Respond with exactly three words: describe the ocean.",
     {"regex": r"\w+\W+\w+\W+\w+", "max_words": 3}),
    ("Give your answer in lowercase letters only: name a season.",
     {"regex": r"(?-i:^[^A-Z]+$)", "any": ["spring", "summer", "autumn", "fall", "winter"]}),
    ("Start your reply with the word 'Sure': can you name a color?", {"regex": r"^\W*sure\b"}),
    ("End your reply with an exclamation mark: greet me.", {"regex": r"![\s\"')\]]*$"}),
    ("Wrap the word 'hello' in square brackets.", {"regex": r"\[\s*hello\s*\]"}),
    ("Write the numbers from one to five, separated by commas.",
     {"regex": r"(1|one)\s*,\s*(2|two)\s*,\s*(3|three)\s*,\s*(4|four)\s*,\s*(and\s+)?(5|five)"}),
    ("Put the answer in quotation marks: what sound does a cat make?",
     {"regex": r"[\"“'‘]\s*(meow|miaow|mew|purr)"}),
]

TRANSLATION = [
    ("How do you say 'hello' in French?", any_("bonjour", "salut")),
    ("What is 'cat' in Spanish?", any_("gato")),
    ("What is the French word for 'dog'?", any_("chien")),
    ("Give the German word for 'house'.", any_("Haus")),
    ("Say 'good morning' in Spanish.", any_("buenos días", "buenos dias")),
    ("In French, how do you say 'thank you'?", any_("merci")),
    ("Translate to German: 'water'", any_("Wasser")),
    ("Translate the word 'book' into Spanish.", any_("libro")),
    ("Please translate 'cheese' into French.", any_("fromage")),
    ("Which Spanish word means 'friend'?", any_("amigo", "amiga")),
    ("The French word for 'water' is what?", any_("eau")),
    ("Tell me the Spanish word for 'dog'.", any_("perro")),
    ("What's 'yes' in German?", any_("ja")),
    ("Can you translate 'goodbye' into French?", any_("au revoir", "adieu", "salut")),
    ("I want to say 'please' in Spanish. What word do I use?", any_("por favor")),
    ("Write 'red' in Spanish.", any_("rojo", "roja")),
    ("How would a German speaker say 'good night'?", any_("gute Nacht")),
    ("Give me the French for 'bread'.", any_("pain")),
    ("Spanish for 'house'?", any_("casa")),
    ("German translation of 'dog', please.", any_("Hund")),
    ("In Spanish, what is the number 'one'?", any_("uno", "una", "un")),
    ("What word do the French use for 'yes'?", any_("oui")),
    ("Convert 'good evening' into Spanish.", any_("buenas noches", "buenas tardes")),
    ("How is 'thank you' said in German?", any_("danke")),
    ("What is the translation of 'apple' in French?", any_("pomme")),
    ("Express 'hello' in Spanish.", any_("hola")),
    ("Render 'boy' in French.", any_("garçon", "garcon")),
    ("Which German word means 'hello'?", any_("hallo", "guten Tag")),
    ("What do Spanish speakers say for 'goodbye'?", any_("adiós", "adios", "hasta luego", "chao", "chau")),
    ("Translate 'cat' to German.", any_("Katze", "Katzen")),
    ("Give the Spanish translation of 'water'.", any_("agua")),
    ("How do Germans say 'good morning'?", any_("guten Morgen")),
    ("If I want to say 'cat' in French, what word do I use?", any_("chat")),
    ("Name the French word for 'sun'.", any_("soleil")),
    ("What would 'milk' be in French?", any_("lait")),
    ("Translate into French: 'friend'", any_("ami", "amie")),
    ("Spanish speakers call a 'girl' what?", any_("niña", "nina", "chica", "muchacha")),
    ("The German word for 'apple' is what?", any_("Apfel")),
]

MULTI_TURN = [
    (["I have a red ball and a blue car.", "Nice! A red ball and a blue car.", "Which toy is red?"],
     any_("ball")),
    (["My favorite fruit is mango.", "Mango is a great choice!", "Which fruit did I say I like?"],
     any_("mango", "mangoes", "mangos")),
    (["Let's talk about Greece.", "Sure! Greece is a country in southern Europe.", "What is its capital?"],
     any_("Athens")),
    (["Think of the number 6.", "Okay, I'm thinking of 6.", "Now add 2 to it. What do you get?"],
     any_("8", "eight")),
    (["Name a fruit that is yellow.", "A banana is yellow.", "And one that is red?"],
     any_("apple", "apples", "strawberry", "strawberries", "cherry", "cherries", "raspberry",
          "raspberries", "tomato", "tomatoes", "watermelon", "pomegranate", "cranberry", "cranberries")),
    (["My dog is called Rex.", "Rex is a lovely name for a dog!", "What's my dog's name?"], any_("Rex")),
    (["I live in Madrid.", "Madrid is a beautiful city!", "Which country do I live in?"], any_("Spain")),
    (["Please remember the number 42.", "Got it: 42.", "What number did I ask you to remember?"],
     any_("42", "forty-two", "forty two")),
    (["The cat is on the mat.", "Okay.", "Where is the cat?"], any_("mat")),
    (["Tom is taller than Sam.", "Understood.", "Who is shorter?"],
     {"regex": r"^\W*sam\b|\bsam\s+is\s+(?:the\s+)?shorter|\bshorter\s+(?:one\s+|person\s+)?is\s+sam\b"
               r"|\b(?:is|it's|it is)\s+sam\b|\bsam\s+is\s+(?:not\s+as|less)\s+tall",
      "none": ["Tom is shorter"]}),
    (["I bought three apples.", "Three apples, nice!", "If I eat one, how many are left?"], any_("2", "two")),
    (["Tell me a color.", "Blue.", "What is that color in Spanish?"], any_("azul")),
    (["My sister's name is Anna.", "Anna is a lovely name.", "What is my sister called?"], any_("Anna")),
    (["I am 10 years old.", "Nice! 10 is a great age.", "How old will I be next year?"], any_("11", "eleven")),
    (["Today is Wednesday.", "Okay, it's Wednesday.", "What day will it be tomorrow?"], any_("Thursday")),
    (["Let's use the word 'day'.", "Sure: 'day'.", "Give me a word that rhymes with it."],
     any_("may", "say", "play", "way", "stay", "pay", "hay", "bay", "gray", "grey", "ray", "lay",
          "clay", "tray", "pray", "spray", "away", "okay", "today", "delay")),
    (["I'm making a sandwich with bread, cheese and ham.", "Sounds tasty!",
      "Which ingredient did I mention first?"], any_("bread")),
    (["There are 5 birds on a tree.", "Okay, 5 birds.", "Two fly away. How many are left?"], any_("3", "three")),
    (["Name an animal that lives in the sea.", "A dolphin.", "Does it live on land or in water?"],
     any_("water", "sea", "ocean", "oceans", "marine", "aquatic")),
    (["My car is green.", "Green is a nice color for a car.", "What color is my car?"], any_("green")),
    (["I like to drink tea in the morning.", "Tea is a great way to start the day.",
      "What do I drink in the morning?"], any_("tea")),
    (["Let's count: one, two, three.", "Four, five, six!", "What comes after six?"], any_("7", "seven")),
    # "3 pm", "3pm", "3:00": a regex, since "3" in "3pm" is not a separate word.
    (["I have a meeting at 3 pm.", "Okay, a meeting at 3 pm.", "What time is my meeting?"],
     {"regex": r"(?<![\d.:])3(?!\d)|\bthree\b"}),
    (["I visited Tokyo last summer.", "Tokyo is an exciting city!", "In which country was I?"], any_("Japan")),
    (["My favorite number is 7.", "Seven is a popular favorite!", "What is my favorite number plus 1?"],
     any_("8", "eight")),
    (["I have two cats and one dog.", "Sounds like a lively home!", "How many cats do I have?"],
     any_("2", "two")),
    (["Let's play a game: I say a word, you say its opposite. Hot.", "Cold.", "Tall."], any_("short")),
    (["Remember this word: banana.", "Okay, I will remember banana.", "What word did I ask you to remember?"],
     any_("banana")),
    (["I am going to the beach tomorrow.", "That sounds fun!", "Where am I going tomorrow?"],
     any_("beach")),
    (["Name a number between 1 and 10.", "5.", "Double it."], any_("10", "ten")),
    (["My brother is named Leo and he is 8.", "Nice to hear about Leo!", "How old is my brother?"],
     any_("8", "eight")),
    (["I want to bake a cake.", "Great idea! You will need flour, eggs, sugar and butter.",
      "Which of those is a dairy product?"], any_("butter")),
    (["A triangle has three sides.", "That's right.", "How many sides do two triangles have in total?"],
     any_("6", "six")),
    (["My favorite color is purple.", "Purple is a lovely color!", "What did I say my favorite color is?"],
     any_("purple")),
    (["I'm reading a book about space.", "Space is fascinating!", "What is my book about?"],
     {"regex": r"\babout\s+(?:outer\s+)?space\b|^\W*(?:outer\s+)?space\b"}),
    (["The box has 4 red pens and 3 blue pens.", "Okay.", "How many pens are in the box?"],
     any_("7", "seven")),
    (["I speak English and Spanish.", "Being bilingual is great!", "How many languages do I speak?"],
     any_("2", "two")),
    (["My cat is black and white.", "What a lovely cat!", "Is my cat orange? Answer yes or no."], NO),
]

EVERYDAY = [
    ("What day comes after Monday?", any_("Tuesday")),
    ("Which month comes after March?", any_("April")),
    ("How many centimetres are in a metre?", any_("100", "hundred")),
    ("How many grams are in a kilogram?", any_("1000", "1,000", "1 000", "thousand")),
    ("How many seconds are in one minute?", any_("60", "sixty")),
    ("A leap year has how many days?", any_("366")),
    ("What season follows winter?", any_("spring")),
    ("What meal do people usually eat in the morning?", any_("breakfast")),
    ("How many weeks are in a year?", any_("52", "fifty-two", "fifty two")),
    ("How many millimetres are in a centimetre?", any_("10", "ten")),
    ("How many eggs are in a dozen?", any_("12", "twelve")),
    ("What do you use to cut paper?",
     any_("scissors", "paper cutter", "paper-cutter", "guillotine", "knife", "craft knife", "box cutter")),
    ("Where do people go to borrow books?", any_("library", "libraries")),
    ("What should you do when a traffic light turns red?", any_("stop", "stopping", "halt")),
    ("Which room in a house is used for cooking?", any_("kitchen")),
    ("What do you wear on your feet?",
     any_("shoes", "shoe", "socks", "sock", "boots", "sneakers", "sandals", "slippers", "trainers")),
    ("Which month starts the year?", any_("January")),
    ("How many quarters make a dollar?", any_("4", "four")),
    ("Half an hour is how many minutes?", any_("30", "thirty")),
    ("Why do people carry umbrellas?", any_("rain", "raining", "rainy", "wet", "dry")),
    ("If it is 3 o'clock now, what time will it be in one hour?", any_("4", "four")),
    ("A square has how many corners?", any_("4", "four")),
    ("Which day is before Friday?", any_("Thursday")),
    ("June has how many days?", any_("30", "thirty")),
    ("How many inches are in a foot?", any_("12", "twelve")),
    ("The evening meal is usually called what?", any_("dinner", "supper")),
    ("Where do you keep milk cold at home?", any_("fridge", "fridges", "refrigerator", "refrigerators")),
    ("What color does a traffic light show for go?", any_("green")),
    ("What do you need to open a locked door?", any_("key", "keys")),
    ("How many years are in a century?", any_("100", "hundred")),
    ("A decade is how many years?", any_("10", "ten")),
    ("Which coin is worth one cent in the United States?", any_("penny", "pennies")),
    ("A typical chair has how many legs?", any_("4", "four")),
    ("What do you put on a letter before mailing it?", any_("stamp", "stamps", "postage")),
    ("Noon is what time of day?", any_("12", "twelve", "midday")),
    ("Which tool do you use to brush your teeth?", any_("toothbrush", "toothbrushes", "tooth brush")),
    ("Which day of the week comes after Saturday?", any_("Sunday")),
    ("The day after today is called what?", any_("tomorrow")),
]

ITEMS_BY_KIND = {"knowledge": KNOWLEDGE, "arithmetic": ARITHMETIC, "word": WORD, "format": FORMAT,
                 "translation": TRANSLATION, "multi_turn": MULTI_TURN, "everyday": EVERYDAY}


# -- replay pool: general prompts (no answers) of many kinds ------------------------------------
def _pool():
    pool = []

    def add(kind, prompts):
        pool.extend({"prompt": p, "kind": kind} for p in prompts)

    add("explanation", [f"Explain {x}" for x in [
        "why we have seasons.", "what a rainbow is.", "how a bicycle works in two sentences.",
        "what a computer virus is.", "why ice floats on water.", "what recycling means.",
        "what a budget is.", "the difference between weather and climate.", "what an election is.",
        "why exercise is good for you.", "how a thermometer works.", "what a volcano is.",
        "what the internet is, briefly.", "why bread rises when it bakes.", "what a map is used for.",
        "what a password is.", "how to read an analogue clock.", "what a noun is.",
        "what an adjective is.", "why the ocean has waves.", "what a fraction is.",
        "what an email is.", "what a habit is.", "what friction is.", "what a shadow is.",
        "why leaves fall in autumn.", "what a calendar is for.", "what vaccines do.",
        "what a museum is.", "how a compass works."]])
    add("definition", [f"Define the word '{w}' in one sentence." for w in [
        "curious", "generous", "brave", "honest", "patient", "polite", "ancient", "fragile",
        "humble", "loyal", "rare", "tidy", "vivid", "cozy", "eager", "gentle", "hollow", "narrow",
        "punctual", "sturdy", "clever", "calm", "fierce", "modest", "noisy"]])
    add("definition", [f"What does the word '{w}' mean?" for w in [
        "journey", "harvest", "neighbor", "festival", "shelter", "invention", "orchard", "puzzle",
        "whisper", "voyage", "treasure", "recipe"]])
    add("explanation", [
        "Why do birds migrate?", "Why do cats purr?", "Why is the sea salty?", "Why do we yawn?",
        "Why do onions make people cry?", "Why do we need to drink water?",
        "Why is it important to wash your hands?", "Why do stars twinkle?",
        "Why does the Moon seem to change shape?", "Why do dogs wag their tails?",
        "Why is recycling important?", "Why do we have fingerprints?", "Why do people wear sunscreen?",
        "Why does metal feel colder than wood?", "Why do apples turn brown after cutting?",
        "Why do bicycles have gears?", "Why do some animals hibernate?", "Why do we get hiccups?",
        "Why do boats float?", "Why do people celebrate birthdays?"])
    add("advice", [f"Give one tip for {x}." for x in [
        "saving money", "sleeping better", "studying for an exam", "staying focused", "making new friends",
        "keeping a room tidy", "drinking more water", "a job interview", "learning a new language",
        "staying calm before a test", "cooking rice", "taking good photos", "writing a clear email",
        "running a first race", "remembering names", "reducing stress", "staying safe online",
        "packing for a trip", "growing tomatoes", "keeping houseplants alive", "public speaking",
        "waking up on time"]])
    add("advice", [
        "What should I bring to a picnic?", "What should I do if I feel tired in the afternoon?",
        "What should I pack for a day at the beach?", "What should I say when I meet someone new?",
        "What should I eat before a long walk?", "What should I do if I forget a friend's birthday?"])
    add("how_to", [
        "How do I boil an egg?", "How do I make a cup of tea?", "How do I tie a shoelace?",
        "How do I plant a seed?", "How do I clean a window without streaks?",
        "How do I start a conversation with a stranger?", "How do I fold a shirt neatly?",
        "How do I write a thank-you card?", "How do I wash my hands properly?",
        "How do I make a paper airplane?", "How can I learn to type faster?",
        "How can I remember a shopping list?", "How can I be more polite in emails?",
        "How can I save energy at home?", "How can I improve my handwriting?",
        "How can I wake up earlier?", "How can I keep my phone battery lasting longer?",
        "How do I make a simple salad?"])
    add("writing", [
        "Write a short birthday message for a friend.", "Write a one-line slogan for a bakery.",
        "Write a two-sentence story about a lost kitten.",
        "Write a polite note asking a neighbor to turn down the music.",
        "Write a short thank-you message to a teacher.", "Write a haiku about rain.",
        "Write a title for a story about a dragon.", "Write a friendly reminder about a meeting tomorrow.",
        "Write a short apology for being late.", "Write a one-sentence description of a sunset.",
        "Write a short invitation to a picnic.", "Write a motivational sentence for a student.",
        "Write a short post about a sunny day.", "Write a short product description for a water bottle.",
        "Write a limerick about a frog.", "Write a short rhyme about the sea.",
        "Write a riddle about a clock.", "Write a sentence using the word 'bright'.",
        "Write a short welcome message for a website.", "Write an out-of-office reply in one sentence.",
        "Write a short note to congratulate a coworker.", "Write a two-line poem about autumn."])
    add("rewrite", [
        "Summarize in one sentence: The meeting was moved from Monday to Wednesday because the room was booked.",
        "Summarize in one sentence: Mia planted tomatoes in spring, watered them every day, and picked them in August.",
        "Summarize in one sentence: The library will close early on Friday for staff training and reopen on Saturday.",
        "Summarize in one sentence: Our team finished the project a week early and the client was very happy.",
        "Summarize in one sentence: It rained all morning, so the football match was moved to the afternoon.",
        "Summarize in one sentence: The bakery on Main Street now sells gluten-free bread every weekend.",
        "Rewrite this sentence more politely: Give me the report now.",
        "Rewrite this sentence more politely: Move your car.",
        "Rewrite this sentence more politely: Be quiet.",
        "Rewrite in the past tense: I walk to school.",
        "Rewrite in the past tense: She sings a song.",
        "Rewrite in the past tense: They play in the park.",
        "Rewrite this sentence in a formal tone: Hey, can you send me that file?",
        "Rewrite this sentence to be shorter: In my personal opinion, I think that we should go.",
        "Correct the grammar: She don't like apples.",
        "Correct the grammar: They was late for the bus.",
        "Correct the grammar: Me and him goes to school.",
        "Correct the grammar: I has two brothers.",
        "Make this sentence more exciting: The dog ran.",
        "Make this sentence more exciting: We went to the park."])
    add("reasoning", [
        "If all roses are flowers and this plant is a rose, is it a flower?",
        "Mia is older than Leo, and Leo is older than Ben. Who is the youngest?",
        "Which is heavier, a kilogram of iron or a kilogram of feathers?",
        "If it rains, the ground gets wet. The ground is dry. Did it rain?",
        "A train leaves at 2 pm and the trip takes 3 hours. When does it arrive?",
        "What comes next in the sequence 2, 4, 8, 16?",
        "What comes next in the pattern A, C, E, G?",
        "Which is bigger, 0.5 or 0.25?",
        "If you face north and turn right, which way are you facing?",
        "A farmer has 5 cows and buys 5 more. Then 2 run away. How many cows does he have?",
        "If a shop opens at 9 and closes at 5, how many hours is it open?",
        "Anna has more books than Joe. Joe has more books than Kim. Who has the fewest books?",
        "If a week has seven days, how many days are in three weeks?",
        "Which one does not belong: apple, banana, carrot, grape?",
        "Which one does not belong: dog, cat, car, horse?"])
    add("knowledge", [f"Tell me one fact about {x}." for x in [
        "elephants", "the ocean", "volcanoes", "penguins", "the human heart", "dolphins",
        "the Amazon rainforest", "owls", "snow", "the Great Wall of China", "octopuses", "sharks",
        "deserts", "giraffes", "bamboo", "clouds", "lightning", "the Olympic Games", "koalas",
        "chocolate", "coffee", "the Arctic", "kangaroos", "tigers", "whales"]])
    add("knowledge", [f"Where is {x} located?" for x in [
        "Mount Kilimanjaro", "Niagara Falls", "the Great Barrier Reef", "Machu Picchu",
        "the Taj Mahal", "Stonehenge", "the Grand Canyon", "the Colosseum"]])
    add("knowledge", [f"Describe {x} in two sentences." for x in [
        "a giraffe", "a thunderstorm", "a lighthouse", "a rainforest", "a desert", "a museum",
        "a farm", "a city park", "a waterfall", "a market"]])
    add("knowledge", [f"What is {x}?" for x in [
        "a peninsula", "a glacier", "a mammal", "a reptile", "an island", "a haiku", "a comet",
        "a harbor", "a metaphor", "a vowel", "an orchestra", "a dictionary"]])
    add("knowledge", [f"Who was {x}?" for x in [
        "Marie Curie", "Cleopatra", "Mozart", "Christopher Columbus", "Nelson Mandela", "Galileo",
        "Confucius", "Frida Kahlo"]])
    add("knowledge", [
        "Which animals live in the Arctic?", "Which foods are high in vitamin C?",
        "Name two animals that can swim.", "Name a musical instrument with strings.",
        "Give an example of a mammal that lays eggs.", "Give an example of a renewable energy source."])
    add("math", [
        "Is 17 a prime number?", "What is 15 percent of 200?", "Round 3.7 to the nearest whole number.",
        "Is 24 divisible by 6?", "What is the next even number after 14?", "Which is larger, 3/4 or 2/3?",
        "Write 0.5 as a fraction.", "What is the average of 2, 4 and 6?", "Is 9 an odd number?",
        "How many sides does a hexagon have?", "What is 25 percent of 80?", "Round 48 to the nearest ten.",
        "What is one third of 9?", "What is 3 cubed?", "Express 3/4 as a percentage.",
        "Is 100 an even number?", "Write the number twelve in digits.", "Write 45 in words."])
    add("word_play", [f"Make a sentence using the word '{w}'." for w in [
        "umbrella", "quickly", "mountain", "garden", "laugh", "river", "bicycle", "window"]])
    add("word_play", [
        "Think of a word that starts with 'sh'.", "Which animal's name starts with 'z'?",
        "Make a compound word with 'sun'.", "What word do you get by adding 'ing' to 'play'?",
        "Give an example of a palindrome word.", "Create a tongue twister about a snake.",
        "What is a homophone of 'pair'?", "Suggest a word containing a double 'o'.",
        "Use the word 'happy' in a question.", "Invent a name for a friendly robot.",
        "Think of a word that ends in 'ight'.", "Create an acronym for a cleaning club."])
    add("format", [
        "Give three tips for staying focused, as a numbered list.",
        "Name four breakfast foods in a bulleted list.", "Answer in two sentences: why do people travel?",
        "Write a JSON object describing a book with keys title and author.",
        "In three bullet points, describe a good teacher.",
        "Respond in under ten words: what makes a good friend?", "Using exactly five words, describe summer.",
        "Reply with a short list of three hobbies.", "Give a title in title case for an article about gardening.",
        "Answer in two sentences: what is a good way to relax?",
        "Write a JSON object with keys city and country for Rome.",
        "In three bullet points, list things to take camping.",
        "Give a short answer: what is a hobby?", "Give a short answer: what is a neighbor?"])
    add("everyday", [
        "What is a good name for a goldfish?", "Suggest a healthy snack.", "Suggest a name for a new bakery.",
        "Recommend a board game for a family night.", "What can I cook with eggs and cheese?",
        "What are some fun things to do on a rainy day?", "How long should I boil pasta?",
        "Give me an idea for a weekend hobby.", "What is a polite way to decline an invitation?",
        "Suggest a gift for a friend who likes reading.", "Suggest a quick lunch idea.",
        "What can I do to relax after work?", "Suggest a name for a pet rabbit.",
        "Recommend a simple exercise I can do at my desk."])
    return pool


# -- assembling and splitting -------------------------------------------------------------------
def user_turns(item):
    return [m["content"] for m in item["messages"] if m["role"] == "user"]


def build_items():
    items = []
    for kind, rows in ITEMS_BY_KIND.items():
        for n, (prompt, spec) in enumerate(rows, 1):
            if isinstance(prompt, str):
                messages = [{"role": "user", "content": prompt}]
            else:
                u1, a1, u2 = prompt
                messages = [{"role": "user", "content": u1}, {"role": "assistant", "content": a1},
                            {"role": "user", "content": u2}]
            check("", spec)  # raises on an unknown checker key
            items.append({"id": f"{PREFIX[kind]}-{n:03d}", "kind": kind, "messages": messages, "check": spec})
    return items


def template_groups(items):
    """Lists of item indices: items whose prompts share a template are in one group."""
    parent = list(range(len(items)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    turns = [user_turns(it) for it in items]
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            if any(shares_template(a, b) for a in turns[i] for b in turns[j]):
                parent[find(j)] = find(i)
    groups = {}
    for i in range(len(items)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def split(items):
    """(dev, test): per kind, template groups shuffled with a fixed seed, each given to the half
    that has fewer items of that kind so far (dev on a tie). A group belongs to the kind of its
    first item."""
    halves = {"dev": [], "test": []}
    groups = template_groups(items)
    for kind in ITEMS_BY_KIND:
        mine = [g for g in groups if items[g[0]]["kind"] == kind]
        random.Random(f"{SEED}-{kind}").shuffle(mine)
        count = {"dev": 0, "test": 0}
        for g in mine:
            half = "dev" if count["dev"] <= count["test"] else "test"
            halves[half].extend(g)
            count[half] += len(g)
    return [[items[i] for i in sorted(halves[h])] for h in ("dev", "test")]


def external_prompts():
    """Prompts the retention items must not share a template with, besides the replay pool:
    the self-replay prompts and every built-in training/validation prompt (user turns)."""
    from finetuning_suite.data.replay import REPLAY_PROMPTS
    builtin = ROOT / "finetuning_suite" / "data" / "builtin"
    files = sorted(glob.glob(str(builtin / "*.train.jsonl")) + glob.glob(str(builtin / "*.validation.jsonl")))
    prompts = list(REPLAY_PROMPTS)
    for path in files + [str(builtin / "general.jsonl")]:
        for line in open(path, encoding="utf-8"):
            row = json.loads(line)
            if "prompt" in row:
                prompts.append(row["prompt"])
            prompts.extend(m["content"] for m in row.get("messages", []) if m["role"] == "user")
    return prompts


def collisions(items, others):
    """(item id, retention prompt, other prompt) for every shared template."""
    # Equal keys have equal four-word prefixes, so indexing by the prefix finds every case.
    by_prefix = {}
    for p in others:
        by_prefix.setdefault(tuple(template_key(p).split()[:4]), []).append(p)
    found = []
    for it in items:
        for p in user_turns(it):
            for o in by_prefix.get(tuple(template_key(p).split()[:4]), []):
                assert shares_template(p, o)
                found.append((it["id"], p, o))
    return found


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main():
    items = build_items()
    pool = _pool()
    bad = collisions(items, [r["prompt"] for r in pool] + external_prompts())
    if bad:
        for b in bad:
            print("template shared:", *b, sep="\n  ")
        raise SystemExit(f"{len(bad)} retention prompts share a template with replay/training prompts")
    dev, test = split(items)
    OUT.mkdir(parents=True, exist_ok=True)
    write_jsonl(OUT / "retention.dev.jsonl", dev)
    write_jsonl(OUT / "retention.test.jsonl", test)
    write_jsonl(OUT / "replay_pool.jsonl", pool)
    for name, half in (("dev", dev), ("test", test)):
        counts = {k: sum(it["kind"] == k for it in half) for k in ITEMS_BY_KIND}
        print(name, len(half), counts)
    print("replay pool", len(pool))


if __name__ == "__main__":
    main()
